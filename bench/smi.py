"""nvidia-smi's memory.used, sampled while a run trains: the one sampler of the benches (bench.py's runs,
cards.py's cards), and the peak it saw above what the cards held before."""

import contextlib
import shutil
import subprocess
from pathlib import Path

SMI = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]  # MiB, one line a card
EVERY_MS = 200


@contextlib.contextmanager
def sampling(cards, out, label):
    """While inside, nvidia-smi's memory.used (MiB) on cards ('0', '0,1'): one reading on entry into
    out/LABEL.idle, then one every 200 ms into out/LABEL.smi. Without nvidia-smi, no files."""
    if not shutil.which("nvidia-smi"):
        yield
        return
    idle = subprocess.run([*SMI, "-i", str(cards)], capture_output=True, text=True).stdout
    Path(out, f"{label}.idle").write_text(idle)
    with open(Path(out, f"{label}.smi"), "w") as samples:
        proc = subprocess.Popen([*SMI, "-i", str(cards), "-lms", str(EVERY_MS)], stdout=samples)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def numbers(path):
    """The numbers in a file of nvidia-smi readings ([] where there is no file)."""
    text = Path(path).read_text() if path and Path(path).is_file() else ""
    return [float(x) for x in text.split() if x.replace(".", "", 1).isdigit()]


def peak_above_idle(smi, idle):
    """The most MiB in the samples file smi above the first card's reading in the file idle (0 without it);
    None without samples."""
    samples = numbers(smi)
    return max(samples) - (numbers(idle) or [0.0])[0] if samples else None
