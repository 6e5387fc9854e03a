"""
Smaller cards on a big one (a GPU benchmark, not a test): for each card, a second process holds all of the
GPU's memory but N GiB, and the default train.py runs beside it with a short budget. A run that ends with the
memory plan's `error:` line runs again with the batch that line names. Each card gets a row: where the
training images went, the batch, steady img/s against that batch's own channels-last ceiling (measured beside
the same blocker), and peak_vram_mb against nvidia-smi. The compute is still the big card's: compare ratios,
not speeds.

Usage (repo root, GPU machine; `tests/bench.py --cards ...` calls it):
    python tests/bench_cards.py --out OUT all 24 16 12 8 80:IMGSZ=1280
A card is `all` (the whole card) or a number of GiB left free, with optional train.py knobs after a colon
(`80:IMGSZ=1280,BATCH=64`), set by tests/bench.py's checked edit (a knob that matches no line of train.py
ends the bench). --budget sets AUTORESEARCH_TIME_BUDGET (default 60 s). Files in OUT: per card LABEL.log,
LABEL.profile.json, LABEL-ceiling.json, and cards.txt, the table printed last.
"""

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import edited_copy, parse_knobs
from bench_profile import summary_of

REPO = Path(__file__).resolve().parents[1]
BLOCKER = """
import sys, time, torch
free = torch.cuda.mem_get_info()[0]
x = torch.empty(max(free - int(float(sys.argv[1]) * 2**30), 0), dtype=torch.uint8, device="cuda")
print("holding", flush=True)
time.sleep(86400)
"""


@contextlib.contextmanager
def card_with(gib):
    """A GPU with about `gib` GiB free while inside (the whole card for None): a process holds the rest."""
    if gib is None:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", BLOCKER, str(gib)], stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "holding":
            raise RuntimeError("the blocker process failed to take the GPU's memory")
        yield
    finally:
        proc.kill()
        proc.wait()


def gpu_used_mib():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                          "-i", "0"], capture_output=True, text=True)
    return int(out.stdout.split()[0])


@contextlib.contextmanager
def smi_peak():
    """{'peak': MiB}: the most the GPU held above what it held on entry, sampled every 0.2 s inside."""
    idle, seen, done = gpu_used_mib(), {"peak": 0}, threading.Event()

    def sample():
        while not done.wait(0.2):
            seen["peak"] = max(seen["peak"], gpu_used_mib() - idle)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        done.set()
        t.join()


def run(label, knobs, gib, out, work, budget):
    """One train.py run on a card with gib GiB free; returns its row's fields."""
    folder = edited_copy(work / label, knobs)
    env = {**os.environ, "AUTORESEARCH_TIME_BUDGET": str(budget), "PYTHONUNBUFFERED": "1",
           "BENCH_PROFILE_OUT": str(out / f"{label}.profile.json")}
    with card_with(gib), smi_peak() as smi:
        t = time.time()
        proc = subprocess.run([sys.executable, "train.py"], cwd=folder, env=env, capture_output=True,
                              text=True)
        wall = time.time() - t
    log = proc.stdout + proc.stderr
    (out / f"{label}.log").write_text(log)
    where = re.search(r"GPU data: .* ([\d.]+) GB in (GPU|host memory)", log)
    profile = out / f"{label}.profile.json"
    steady = json.loads(profile.read_text())["totals"]["steady_img_per_s"] if profile.is_file() else 0.0
    return {"log": log, "summary": summary_of(log),
            "last": log.strip().splitlines()[-1] if log.strip() else "",
            "images": f"{where[2]} ({where[1]} GB)" if where else "-", "steady": steady, "smi": smi["peak"],
            "wall": wall, "folder": folder}


def ceiling(label, folder, gib, out):
    """That train.py's model-only ceiling in the channels-last layout, beside the same blocker (img/s, or
    0)."""
    path = out / f"{label}-ceiling.json"
    with card_with(gib):
        subprocess.run([sys.executable, str(REPO / "tests" / "bench_ceiling.py"),
                        "--train", str(folder / "train.py"),
                        "--layouts", "channels_last", "--out", str(path)], capture_output=True, text=True)
    try:
        return json.loads(path.read_text())["layouts"]["channels_last"]["img_per_s"]
    except (OSError, KeyError, ValueError):
        return 0.0


def parse_card(spec):
    """'24' or '80:IMGSZ=1280,BATCH=64' or 'all' -> (label, GiB free or None, knobs)."""
    free, _, knobs = spec.partition(":")
    knobs = parse_knobs(knobs)
    label = ("all" if free == "all" else f"{free}GB") + "".join(f"-{k}{v}" for k, v in knobs.items())
    return label, None if free == "all" else float(free), knobs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cards", nargs="+", help="all, or GiB left free, optionally :KNOB=VALUE,...")
    parser.add_argument("--out", default="bench-out", help="folder for logs and the table")
    parser.add_argument("--budget", type=float, default=60, help="AUTORESEARCH_TIME_BUDGET of each run")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-cards-"))
    head = ("card (GiB free)", "asked", "error: line", "images in", "batch", "steady img/s", "ceiling",
            "share", "peak_vram_mb", "smi peak", "wall s")
    rows = []
    for spec in args.cards:
        label, gib, knobs = parse_card(spec)
        r = run(label, knobs, gib, out, work, args.budget)
        asked = knobs.get("BATCH", "train.py's")
        refused = re.search(r"BATCH = (\d+) fits", r["last"]) if r["last"].startswith("error:") else None
        if refused:  # the memory plan's line: the same card again at the batch it names
            knobs = {**knobs, "BATCH": refused[1]}
            label += f"-batch{refused[1]}"
            r = run(label, knobs, gib, out, work, args.budget)
        s = r["summary"]
        top = ceiling(label, r["folder"], gib, out) if s else 0.0
        rows.append((label, asked, "names " + refused[1] if refused else "none", r["images"],
                     s.get("batch", "-"),
                     f"{r['steady']:.0f}", f"{top:.0f}", f"{r['steady'] / top:.1%}" if top else "-",
                     s.get("peak_vram_mb", r["last"][:60]), str(r["smi"]), f"{r['wall']:.0f}"))
        print(" | ".join(rows[-1]), flush=True)
    table = "\n".join("| " + " | ".join(row) + " |" for row in [head, ["---"] * len(head), *rows])
    (out / "cards.txt").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
