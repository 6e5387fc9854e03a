"""
Smaller cards on a big one (a GPU benchmark, not a test): for each card, a second process holds all of the
GPU's memory but N GiB, and the default train.py runs beside it with a short budget. A run that ends with the
memory plan's `error:` line runs again with the batch that line names. Each card gets a row: where the
training images went, the batch, steady img/s against that batch's own channels-last ceiling (measured beside
the same blocker), and peak_vram_mb against nvidia-smi. The compute is still the big card's: compare ratios,
not speeds.

Usage (repo root, GPU machine; `bench/bench.py --cards ...` calls it):
    python bench/cards.py --out OUT all 24 16 12 8 80:IMGSZ=1280
A card is `all` (the whole card) or a number of GiB left free, with optional train.py knobs after a colon
(`80:IMGSZ=1280,BATCH=64`), set by harness/knobs.py's checked edit (a knob that matches no line of train.py
ends the bench). --budget sets AUTORESEARCH_TIME_BUDGET (default 60 s). Files in OUT: per card LABEL.log,
LABEL.profile.json, LABEL.smi/.idle (bench/smi.py), LABEL-ceiling.json, and cards.txt, the table printed
last.
"""

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import smi
from bench import edited_copy, parse_knobs

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from harness.common import HarnessError  # noqa: E402
from harness.knobs import edit_knobs  # noqa: E402
from harness.summary import parse_summary  # noqa: E402

BLOCKER = """
import sys, time, torch
free = torch.cuda.mem_get_info()[0]
x = torch.empty(max(free - int(float(sys.argv[1]) * 2**30), 0), dtype=torch.uint8, device="cuda")
print("holding", flush=True)
time.sleep(86400)
"""


class CardRun(NamedTuple):
    """One train.py run on a card: what its row reads."""
    summary: dict       # the summary's values ({} if the run failed)
    last: str           # the log's last line
    images: str         # where the training images went: 'GPU (3.0 GB)' or 'host memory (...)', else '-'
    steady: float       # steady img/s (bench/profiler.py), 0 without a profile
    smi: str            # nvidia-smi's peak MiB above the card's memory.used before the run, '-' without it
    wall: float         # seconds
    folder: Path        # the run's copy of the harness


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


def run(label, knobs, gib, out, work, budget):
    """One train.py run on a card with gib GiB free: its CardRun."""
    folder = edited_copy(work / label, knobs)
    env = {**os.environ, "AUTORESEARCH_TIME_BUDGET": str(budget), "PYTHONUNBUFFERED": "1",
           "BENCH_PROFILE_OUT": str(out / f"{label}.profile.json")}
    with card_with(gib), smi.sampling(0, out, label):  # after the blocker: its memory counts as idle
        t = time.time()
        proc = subprocess.run([sys.executable, "train.py"], cwd=folder, env=env, capture_output=True,
                              text=True)
        wall = time.time() - t
    log = proc.stdout + proc.stderr
    (out / f"{label}.log").write_text(log)
    where = re.search(r"GPU data: .* ([\d.]+) GB in (GPU|host memory)", log)
    profile = out / f"{label}.profile.json"
    steady = json.loads(profile.read_text())["totals"]["steady_img_per_s"] if profile.is_file() else 0.0
    peak = smi.peak_above_idle(out / f"{label}.smi", out / f"{label}.idle")
    return CardRun(parse_summary(log), log.strip().splitlines()[-1] if log.strip() else "",
                   f"{where[2]} ({where[1]} GB)" if where else "-", steady,
                   "-" if peak is None else f"{peak:.0f}", wall, folder)


def ceiling(label, folder, gib, out):
    """That train.py's model-only ceiling in the channels-last layout, beside the same blocker (img/s, or
    0)."""
    path = out / f"{label}-ceiling.json"
    with card_with(gib):
        subprocess.run([sys.executable, str(REPO / "bench" / "ceiling.py"),
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


HEAD = ("card (GiB free)", "asked", "error: line", "images in", "batch", "steady img/s", "ceiling", "share",
        "peak_vram_mb", "smi peak", "wall s")


def card_row(spec, out, work, budget):
    """The row of one card (a HEAD's worth of strings): train.py run beside the blocker, and once more at the
    batch that the memory plan's `error:` line names, if it names one."""
    label, gib, knobs = parse_card(spec)
    r = run(label, knobs, gib, out, work, budget)
    asked = knobs.get("BATCH", "train.py's")
    refused = re.search(r"BATCH = (\d+) fits", r.last) if r.last.startswith("error:") else None
    if refused:  # the memory plan's line: the same card again at the batch it names
        knobs = {**knobs, "BATCH": refused[1]}
        label += f"-batch{refused[1]}"
        r = run(label, knobs, gib, out, work, budget)
    s = r.summary
    top = ceiling(label, r.folder, gib, out) if s else 0.0
    return (label, asked, "names " + refused[1] if refused else "none", r.images, s.get("batch", "-"),
            f"{r.steady:.0f}", f"{top:.0f}", f"{r.steady / top:.1%}" if top else "-",
            s.get("peak_vram_mb", r.last[:60]), r.smi, f"{r.wall:.0f}")


def table(rows):
    """The cards' Markdown table: HEAD, then one line a row."""
    return "\n".join("| " + " | ".join(row) + " |" for row in [HEAD, ["---"] * len(HEAD), *rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cards", nargs="+", help="all, or GiB left free, optionally :KNOB=VALUE,...")
    parser.add_argument("--out", default="bench-out", help="folder for logs and the table")
    parser.add_argument("--budget", type=float, default=60, help="AUTORESEARCH_TIME_BUDGET of each run")
    args = parser.parse_args(argv)
    train = (REPO / "train.py").read_text()
    try:  # every card's edit, before anything runs
        for spec in args.cards:
            edit_knobs(train, parse_card(spec)[2])
    except HarnessError as e:
        sys.exit(f"bench: {e}")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-cards-"))
    rows = []
    for spec in args.cards:
        rows.append(card_row(spec, out, work, args.budget))
        print(" | ".join(rows[-1]), flush=True)
    (out / "cards.txt").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
