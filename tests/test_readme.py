"""The README is a manual: it opens with the two commands, and its Python example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_make_demo_and_make_test():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).splitlines()
    assert [line.split()[:2] for line in first_block] == [["make", "demo"], ["make", "test"]]
    assert len(README.splitlines()) <= 170


def test_readme_python_example_runs(tmp_path):
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    code = code.replace('"configs/model/tiny.yaml"', repr(str(ROOT / "configs" / "model" / "tiny.yaml")))
    t = np.arange(16000 * 2) / 16000
    sf.write(tmp_path / "question.wav", 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32), 16000)
    run = subprocess.run([sys.executable, "-c", code.replace("max_new_tokens=64", "max_new_tokens=4")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "out" / "ckpt" / "model.safetensors").exists()
