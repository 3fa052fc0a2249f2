"""Executes every notebook in notebooks/ top to bottom on CPU, so they never rot.

nbclient runs each on the "python3" kernel; jupyter_client starts it with the interpreter
running pytest (the .venv, where hydrogen_ops is built in place), from the notebooks/ folder.
Each notebook must finish within 3 minutes (quickstart and huggingface load SmolLM2-135M-Instruct,
about 20 s, and prefill its 2,353-token document several times).
"""

from __future__ import annotations

import os
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = sorted(f for f in os.listdir(NOTEBOOK_DIR) if f.endswith(".ipynb"))
BUDGET_S = 180


def test_notebooks_exist():
    assert {"quickstart.ipynb", "huggingface.ipynb", "hierarchical.ipynb"} <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    env = dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    client = nbclient.NotebookClient(nb, timeout=BUDGET_S, kernel_name="python3",
                                     resources={"metadata": {"path": NOTEBOOK_DIR}})
    t0 = time.perf_counter()
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    elapsed = time.perf_counter() - t0
    assert elapsed < BUDGET_S, f"{name} took {elapsed:.0f} s (budget {BUDGET_S} s)"
