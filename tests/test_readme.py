"""Every ```python block of README.md runs on its own and prints something: a newcomer can
paste any one of them into a fresh interpreter."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs_alone(code, tmp_path):
    """A fresh interpreter per block (no names from an earlier one), in an empty folder (files a
    block writes land there), importing the same fusedopt as this test run."""
    import fusedopt

    if re.search(r"^import torch|^import fusedopt.torch", code, re.M):
        pytest.importorskip("torch")  # the PyTorch section's blocks need the torch extra
    if "ml_dtypes" in code:
        pytest.importorskip("ml_dtypes")
    package_root = str(Path(fusedopt.__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": package_root})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the block printed nothing"
    assert "Warning" not in result.stderr, result.stderr
