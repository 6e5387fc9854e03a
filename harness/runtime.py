"""The offline runtime: environment set before Ultralytics is imported, and the patches that keep a run
offline, the dataset read-only and run.log short."""

import functools
import hashlib
import os
import re
import sys
from pathlib import Path

from harness import common
from harness.common import atomic_path, write_atomic


def go_offline():
    """Set before Ultralytics is imported, so nothing reaches for the network; run.log reads in order."""
    os.environ["YOLO_OFFLINE"] = "1"      # no DNS probes, telemetry, update checks or asset downloads
    os.environ["YOLO_AUTOINSTALL"] = "0"  # never pip-install a "missing" requirement mid-run
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir())  # settings and fonts live with us
    os.environ.setdefault("MPLCONFIGDIR", str(common.CACHE_DIR / "matplotlib"))
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # run.log reads in order, and live, when stdout is a file


def config_dir():
    """Ultralytics' settings folder: one per checkout, since its settings name the checkout's runs and
    weights."""
    return common.CACHE_DIR / "ultralytics" / hashlib.sha1(str(common.REPO_DIR).encode()).hexdigest()[:12]


@functools.cache  # once: start() and prepare.Trainer both need it, and the patches must not stack
def configure_ultralytics():
    """Once Ultralytics is importable: finish the offline setup, keep the dataset read-only, and keep
    run.log short."""
    import matplotlib
    import ultralytics.data.base as base_mod
    import ultralytics.data.dataset as dataset_mod
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod
    import ultralytics.utils.tqdm as tqdm_mod
    from ultralytics.utils import LOGGER, SETTINGS, USER_CONFIG_DIR

    # Dataset checks ask for Arial.ttf and download it when missing: give them matplotlib's font.
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (USER_CONFIG_DIR / name).exists():
            write_atomic(USER_CONFIG_DIR / name, font.read_bytes())
    # Ultralytics writes labels.cache next to the labels: keep it in our cache, the dataset read-only.
    dataset_mod.load_dataset_cache_file = lambda path, load=dataset_mod.load_dataset_cache_file: load(
        labels_cache(path))
    dataset_mod.save_dataset_cache_file = save_labels_cache
    # Ultralytics "restores" a truncated JPEG by rewriting it in place; it decodes as it is, so leave it.
    data_utils._replace_image = lambda im_file, write: None
    # Its disk-speed check reads a few images of each split more (past the watch on the val split's reads)
    # and warns "Slow image access" of any disk that is cold at a run's first read.
    base_mod.check_file_speeds = lambda *args, **kwargs: None
    # No telemetry, and model.val() or a relative project= in train.py write into this checkout's run folder.
    ours = {"sync": False, "runs_dir": str(common.RUN_DIR), "weights_dir": str(common.WEIGHTS_DIR),
            "datasets_dir": str(common.CACHE_DIR / "datasets")}
    if any(SETTINGS.get(k) != v for k, v in ours.items()):
        SETTINGS.update(ours)
    trainer_mod.check_amp = check_amp
    # Progress bars redraw with '\r' ten times a second; in a log file print one line a minute.
    tqdm_mod.is_noninteractive_console = lambda: not sys.stdout.isatty()
    LOGGER.addFilter(say_the_budget)


def say_the_budget(record):
    """Ultralytics' "Starting training for 0.0833 hours..." in the budget's seconds, and what its epoch counts
    are: before the first epoch ends it counts out of its default number of epochs. Returns True (keep the
    record)."""
    if isinstance(record.msg, str) and (hours := re.search(r"Starting training for ([\d.e-]+) hours\.\.\.",
                                                              record.msg)):
        record.msg = record.msg.replace(hours[0], (
            f"Starting training for {float(hours[1]) * 3600:.0f} s, the time budget. The first epoch counts "
            "out of Ultralytics' default number of epochs, the next ones out of its estimate of what fits"))
    return True


def check_amp(model):
    """Ultralytics' AMP self-test, offline: it loads yolo26n.pt from the internet. AMP is well supported on
    CUDA GPUs; on the CPU the answer is False, as Ultralytics' own: CPU autocast is bfloat16, 4x slower than
    float32 where the CPU lacks AVX512-BF16. Returns whether to train with AMP."""
    return next(model.parameters()).device.type == "cuda"


def labels_cache(path):
    """Where the label cache Ultralytics wants at `path` (inside the dataset) lives instead."""
    digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]
    return common.CACHE_DIR / "labels" / f"{Path(path).parent.name}-{Path(path).stem}-{digest}.cache"


def save_labels_cache(prefix, path, x, version):
    from ultralytics.data.utils import save_dataset_cache_file
    with atomic_path(labels_cache(path)) as tmp:
        save_dataset_cache_file(prefix, tmp, x, version)  # writes nothing where the folder is read-only
