"""The README's Python blocks run as written, each on its own in a fresh interpreter (what a
reader pasting one block would do)."""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_alone(index, tmp_path):
    block = BLOCKS[index]
    if "onnxruntime" in block:
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    result = subprocess.run(
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"README block {index} failed:\n{block}\n{result.stderr[-3000:]}"
