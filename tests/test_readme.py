"""The README's code blocks run as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BLOCKS = re.findall(r"```python\n(.*?)```", open(README).read(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    code = BLOCKS[index]
    if "hydrogen_ops.hf" in code:
        assert len(code.strip().splitlines()) <= 20, "the HuggingFace example must stay within 20 lines"
    exec(compile(code, f"README block {index}", "exec"), {})
