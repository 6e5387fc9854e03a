"""The layout: prepare.py is the contract, harness/ the machinery behind it."""

import json
import subprocess
import sys

from conftest import REPO

MODULES = ["common", "runtime", "dataset", "synthetic", "synthetic.__main__", "gpu_data", "trainer", "device",
           "ddp", "progress", "supervisor", "validation", "cli", "memory", "night", "watch", "record",
           "knobs", "summary"]


def test_the_harness_is_a_leaf_that_does_nothing_at_import():
    code = f"""
import json, os, sys
def ours():
    return {{k: v for k, v in os.environ.items() if k.startswith(("YOLO_", "MPLCONFIGDIR", "AUTORESEARCH_"))}}
before = ours()
for m in {MODULES!r}:
    __import__("harness." + m)
print(json.dumps({{"imported": sorted({{"prepare", "ultralytics", "torch"}} & set(sys.modules)),
                  "environment changed": ours() != before}}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"imported": [], "environment changed": False}


def test_the_contract_and_the_machinery_stay_small():
    read_by_the_agent = ("README.md", "program.md", "prepare.py", "train.py")
    assert sum(len((REPO / name).read_bytes()) for name in read_by_the_agent) <= 60_000
    for path in (REPO / "harness").rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 700, path
