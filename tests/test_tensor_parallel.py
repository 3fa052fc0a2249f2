"""Tensor parallel on 2 CPU ranks (gloo, torchrun): a model loaded with tp_plan="auto" gives,
through hydrogen_ops.hf.generate (attn "hydrogen") and generate_batch (attn "paged|hydrogen"),
the greedy tokens of a single process; attention sees the rank's local heads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers needs it for tp_plan

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from hf_models import make_model  # noqa: E402


def run(cmd, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_two_cpu_ranks_match_one_process(tmp_path):
    model_dir = tmp_path / "tiny"
    make_model("llama", seed=2).save_pretrained(model_dir)  # 4 heads, 2 KV heads, vocab 160: divisible by 2
    worker = os.path.join(HERE, "tp_worker.py")
    run([sys.executable, worker, str(model_dir), str(tmp_path / "one.json")], tmp_path)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(port), worker,
         str(model_dir), str(tmp_path / "two.json")], tmp_path)
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["world"], two["world"]) == (1, 2)
    assert one["query_heads"] == [4] and two["query_heads"] == [2]
    assert two["shared_steps"] > 0  # paged|hydrogen decoded shared prefixes on each rank
    assert two["generate"] == one["generate"]
    assert two["generate_batch"] == one["generate_batch"]
    assert list(one["generate_batch"].values()) == one["generate"]
