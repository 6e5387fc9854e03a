"""
Fixed runtime for autoresearch on aerial ship detection. Read-only for the agent.

Usage:
    uv run prepare.py                        # find and check the dataset, print its stats
    uv run prepare.py --synthetic full       # generate the stand-in at Kaggle scale (small: CPU default)
    uv run prepare.py --weights yolo11n.pt   # one-time download of pretrained weights into weights/
    uv run prepare.py progress               # results.tsv -> progress.png and a short text summary

train.py imports this module before Ultralytics: the import makes the run offline and routes
failures to a one-line `error:`; start() checks the dataset before any GPU time is spent, and
finish() validates the honesty of the run and prints the summary that program.md greps.
"""

import contextlib
import errno
import functools
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from copy import copy
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

# ---------------------------------------------------------------------------
# Constants (fixed, do not modify)
# ---------------------------------------------------------------------------

T0 = time.time()                     # total_seconds counts from here: train.py imports prepare first
TIME_BUDGET = 300                    # seconds of training per experiment (Ultralytics' own clock)
FITNESS_KEY = "metrics/mAP50-95(B)"  # the one number the agent maximizes
REPO_DIR = Path(__file__).resolve().parent
DEFAULT_DATA = REPO_DIR / "ships-aerial-images" / "data.yaml"  # YOLO_DATA overrides it
RUN_DIR = REPO_DIR / "run"           # one run folder, emptied at the start of every run
WEIGHTS_DIR = REPO_DIR / "weights"   # local pretrained weights (*.pt)
CACHE_DIR = Path(os.environ.get("AUTORESEARCH_CACHE", "~/.cache/autoresearch-ships")).expanduser()
SYNTH_SEED = 0                       # the stand-in dataset is a pure function of this seed
MAX_BAD_SHARE = 0.01                 # above this share of broken files in a split the run refuses to start
IMG_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# results.tsv and progress.png (`uv run prepare.py progress`)
RESULTS_COLUMNS = ["commit", "metric", "memory_gb", "status", "description"]
STATUSES = ("keep", "discard", "crash")
LAST_KEPT_SHOWN = 5      # how many recent kept changes the summary lists
LABEL_MAX_CHARS = 30     # plot annotations get truncated to this
LABEL_ANGLE = 60         # degrees
LABEL_SLOTS = 35         # at most this many labels across the x axis
PLOT_SIZE_INCHES = (10, 5)
PLOT_DPI = 120

# Tests shorten the budget; nothing may lengthen it, and the summary always shows it.
if "AUTORESEARCH_TIME_BUDGET" in os.environ:
    TIME_BUDGET = min(TIME_BUDGET, float(os.environ["AUTORESEARCH_TIME_BUDGET"]))
# A run still going this long after its checks (570 s for the 300 s budget) is stopped by the harness
# itself, before the agent's 10-minute kill: set-up and the final validation get plenty of slack.
OVERRUN_LIMIT = 1.8 * TIME_BUDGET + 30

# Evaluation settings that train.py must leave at Ultralytics' defaults (the honest-metric guard).
EVAL_ARGS = ("split", "conf", "iou", "max_det", "classes", "agnostic_nms", "augment", "single_cls")
# Several GPUs (DEVICE = [0, 1] in train.py): Ultralytics trains in DDP worker processes, and each worker
# hands the parent what the summary needs in one small file in the run folder.
DDP_HANDOFF = "ddp-rank{rank}.json"
DDP_STOP_GRACE = 30      # seconds the DDP workers get to exit after SIGTERM before they are killed

# ---------------------------------------------------------------------------
# Offline runtime: set before Ultralytics is imported, so nothing reaches for the network
# ---------------------------------------------------------------------------

os.environ["YOLO_OFFLINE"] = "1"        # no DNS probes, telemetry, update checks or asset downloads
os.environ["YOLO_AUTOINSTALL"] = "0"    # never pip-install a "missing" requirement mid-run
os.environ["YOLO_CONFIG_DIR"] = str(CACHE_DIR / "ultralytics")  # settings and fonts live with us
os.environ.setdefault("MPLCONFIGDIR", str(CACHE_DIR / "matplotlib"))
if hasattr(sys.stdout, "reconfigure"):
    sys.stdout.reconfigure(line_buffering=True)  # run.log reads in order, and live, when stdout is a file


class HarnessError(Exception):
    """A failure with a one-line explanation: printed as `error: ...`, no traceback."""


def warn(msg):
    print(f"WARNING: {msg}")


def banner(msg):
    line = "=" * 78
    print(f"{line}\nWARNING: {msg}\n{line}")


@functools.cache  # once: start() and prepare.Trainer both need it, and the patches must not stack
def _configure_ultralytics():
    """Once Ultralytics is importable: finish the offline setup, keep the dataset read-only, and keep
    run.log short."""
    import matplotlib
    import ultralytics.data.dataset as dataset_mod
    import ultralytics.data.utils as data_utils
    import ultralytics.engine.trainer as trainer_mod
    import ultralytics.utils.tqdm as tqdm_mod
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    # Dataset checks ask for Arial.ttf and download it when missing: give them matplotlib's font.
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (USER_CONFIG_DIR / name).exists():
            write_atomic(USER_CONFIG_DIR / name, font.read_bytes())
    # Ultralytics writes labels.cache next to the labels: keep it in our cache, the dataset read-only.
    dataset_mod.load_dataset_cache_file = lambda path, load=dataset_mod.load_dataset_cache_file: load(
        labels_cache(path))
    dataset_mod.save_dataset_cache_file = _save_labels_cache
    # Ultralytics "restores" a truncated JPEG by rewriting it in place; it decodes as it is, so leave it.
    data_utils._replace_image = lambda im_file, write: None
    if SETTINGS.get("sync"):
        SETTINGS.update({"sync": False})
    # The AMP self-test loads yolo26n.pt from the internet; AMP is well supported on CUDA GPUs.
    trainer_mod.check_amp = lambda model: True
    # Progress bars redraw with '\r' ten times a second; in a log file print one line a minute.
    tqdm_mod.is_noninteractive_console = lambda: not sys.stdout.isatty()


@contextlib.contextmanager
def atomic_path(path):
    """A temporary name beside `path` to write to, moved onto `path` in one step once written: another
    process reading `path` (two agents share the cache) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    yield tmp
    if tmp.exists():
        os.replace(tmp, path)


def write_atomic(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def labels_cache(path):
    """Where the label cache Ultralytics wants at `path` (inside the dataset) lives instead."""
    digest = hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:16]
    return CACHE_DIR / "labels" / f"{Path(path).parent.name}-{Path(path).stem}-{digest}.cache"


def _save_labels_cache(prefix, path, x, version):
    from ultralytics.data.utils import save_dataset_cache_file
    with atomic_path(labels_cache(path)) as tmp:
        save_dataset_cache_file(prefix, tmp, x, version)  # writes nothing where the folder is read-only


# ---------------------------------------------------------------------------
# Failures: every crash ends the log with one `error:` line and a non-zero exit
# ---------------------------------------------------------------------------

def _find_trainer(tb):
    """The Ultralytics trainer whose frame raised, if any (to say which batch ran out of memory)."""
    trainer = None
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if type(obj).__name__.endswith("Trainer") and hasattr(obj, "args"):
            trainer = obj
        tb = tb.tb_next
    return trainer


def describe_failure(exc, tb=None):
    """One line that says what failed and what to do about it."""
    if isinstance(exc, HarnessError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT or SIGTERM) before the run finished; the next run starts clean"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (f"disk full ({exc.filename or 'while writing'}): free space on the disk that holds "
                f"{RUN_DIR} and {CACHE_DIR}, then run again")
    if "out of memory" in text.lower() or type(exc).__name__ == "OutOfMemoryError":
        trainer = _find_trainer(tb)
        where = f" at batch={trainer.args.batch} imgsz={trainer.args.imgsz}" if trainer else ""
        return f"CUDA out of memory{where}; lower BATCH or IMGSZ (or pick a smaller MODEL) in train.py"
    return f"{type(exc).__name__}: {text}"[:300]


def _excepthook(exc_type, exc, tb):
    sys.stdout.flush()
    if not isinstance(exc, (HarnessError, KeyboardInterrupt)):
        sys.__excepthook__(exc_type, exc, tb)
        sys.stderr.flush()
    print(f"error: {describe_failure(exc, tb)}", flush=True)
    if _ddp_rank() >= 0:  # a DDP worker: its parent ends the log with this line, not torch.distributed's traceback
        write_handoff(_ddp_rank(), {"error": describe_failure(exc, tb)})


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # `timeout` and kill send SIGTERM: end through the same clean path


sys.excepthook = _excepthook
if __name__ != "__mp_main__":  # worker processes keep their default handlers
    signal.signal(signal.SIGTERM, _sigterm)

# ---------------------------------------------------------------------------
# Dataset: find it, resolve its splits, check every label before training
# ---------------------------------------------------------------------------


def find_dataset():
    """(data.yaml, kind): YOLO_DATA, else ships-aerial-images/, else the synthetic stand-in."""
    if env := os.environ.get("YOLO_DATA"):
        path = Path(env).expanduser().resolve()
        if not path.is_file():
            raise HarnessError(f"YOLO_DATA={env}: no such file; point it at a dataset YAML or unset it")
        return path, "YOLO_DATA"
    if DEFAULT_DATA.is_file():
        return DEFAULT_DATA, "real"
    folder = DEFAULT_DATA.parent
    if (folder / "train" / "images").is_dir():
        raise HarnessError(f"{folder}: has train/images but no data.yaml; copy the data.yaml from "
                           "Kaggle's zip there (see ships-aerial-images/README.md)")
    return synthetic_dataset(), "synthetic"


def synthetic_dataset():
    """The stand-in's data.yaml: the largest one already generated, else a new one (full on a GPU)."""
    existing = [s for s in ("full", "small") if (synthetic_dir(s) / "data.yaml").is_file()]
    scale = existing[0] if existing else ("full" if _cuda_available() else "small")
    if not existing:
        # In a child process: the generator's worker pool re-imports the main script, which must be
        # prepare.py (guarded by __main__), never train.py.
        if subprocess.run([sys.executable, __file__, "--synthetic", scale]).returncode != 0:
            raise HarnessError(f"generating the synthetic stand-in failed (see above); "
                               f"try `uv run prepare.py --synthetic {scale}`")
    return synthetic_dir(scale) / "data.yaml"


def make_synthetic(scale):
    """Generate the stand-in at this scale unless it exists (prepare.py must be the main script)."""
    out = synthetic_dir(scale)
    if not (out / "data.yaml").is_file():
        counts = SYNTH_SCALES[scale]
        print(f"generating the synthetic stand-in ({scale}: {sum(counts.values())} images) in {out} ...")
        t0 = time.time()
        generate_synthetic(out, counts, seed=SYNTH_SEED)
        print(f"generated in {time.time() - t0:.1f} s")
    return out / "data.yaml"


def synthetic_dir(scale):
    return CACHE_DIR / f"synthetic-{scale}-seed{SYNTH_SEED}"


def _cuda_available():
    import torch
    return torch.cuda.is_available()


def read_yaml(path):
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise HarnessError(f"{path}: cannot read ({e}); fix the file's permissions or re-export it")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise HarnessError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax")
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: empty or not a mapping; it needs train:, val:, nc: and names:")
    return data


def resolve_split(yaml_path, data, key):
    """A split's image folder. Paths may be relative to `path:` or the YAML's folder, or absolute
    paths from another machine (Kaggle's /kaggle/input/...): then the longest tail of the path
    that exists under the YAML's folder wins."""
    value = data.get(key)
    if not value or not isinstance(value, str):
        raise HarnessError(f"{yaml_path}: no '{key}:' entry; add '{key}: {key}/images' (the split's image folder)")
    root = yaml_path.parent
    base = Path(data["path"]) if isinstance(data.get("path"), str) else root
    base = base if base.is_absolute() else root / base
    path = Path(value)
    candidates = [path] if path.is_absolute() else [base / path, root / path]
    parts = [p for p in path.parts if p not in ("/", "..", ".")]
    candidates += [root.joinpath(*parts[i:]) for i in range(len(parts))]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    raise HarnessError(f"{yaml_path}: {key}: {value} is not a folder (looked under {root}); "
                       "fix the path or put the split there")


def split_files(img_dir):
    """Image paths of a split, and the label path of each (Ultralytics: last /images/ -> /labels/)."""
    images = sorted(Path(d) / f for d, _, fs in os.walk(img_dir) for f in fs
                    if Path(f).suffix.lower() in IMG_SUFFIXES)
    labels = []
    for im in images:
        head, sep, tail = str(im).rpartition(f"{os.sep}images{os.sep}")
        labels.append(Path(head + f"{os.sep}labels{os.sep}" + tail).with_suffix(".txt") if sep else None)
    return images, labels


def check_label_file(path, nc):
    """(number of boxes, problem or None) for one YOLO label file."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return 0, None  # no label file: a background image, as in Ultralytics
    except (OSError, UnicodeDecodeError) as e:
        return 0, f"{path}: unreadable ({e})"
    boxes = 0
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{n}"
        if len(fields) != 5:
            return boxes, f"{where}: {len(fields)} columns, expected 5 (class cx cy w h)"
        try:
            cls, cx, cy, w, h = (float(f) for f in fields)
        except ValueError:
            return boxes, f"{where}: non-numeric value in '{line.strip()}'"
        if cls != int(cls) or not 0 <= cls < nc:
            return boxes, f"{where}: class {fields[0]} out of range 0..{nc - 1}"
        if not all(0 <= v <= 1 for v in (cx, cy, w, h)):
            return boxes, f"{where}: coordinates must be normalized to [0, 1]"
        if w <= 0 or h <= 0:
            return boxes, f"{where}: box width and height must be positive"
        boxes += 1
    return boxes, None


def check_image_file(path):
    """A problem string if the image cannot be used, else None (header read only: fast)."""
    from PIL import Image
    try:
        if path.stat().st_size == 0:
            return f"{path}: empty file (0 bytes)"
        with Image.open(path) as im:
            w, h = im.size
        if w < 10 or h < 10:
            return f"{path}: image {w}x{h} is smaller than 10 px"
        if path.suffix.lower() in (".jpg", ".jpeg"):
            with open(path, "rb") as f:
                f.seek(-2, os.SEEK_END)
                if f.read() != b"\xff\xd9":
                    return f"{path}: truncated JPEG (no end marker)"
    except Exception as e:  # PIL raises many types for broken files
        return f"{path}: unreadable image ({type(e).__name__})"
    return None


def label_folder(img_dir):
    """The labels folder that goes with a split's images folder (images -> labels)."""
    return Path(str(img_dir).replace(f"{os.sep}images", f"{os.sep}labels"))


def _fingerprint(yaml_path, split_dirs):
    """Cheap identity of a dataset: names, sizes and mtimes of every file, plus the YAML."""
    h = hashlib.sha1(yaml_path.read_bytes())
    for d in split_dirs:
        for top in (d, label_folder(d)):
            for dirpath, _, files in sorted(os.walk(top)):
                for f in sorted(files):
                    st = os.stat(os.path.join(dirpath, f))
                    h.update(f"{dirpath}/{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def check_dataset(yaml_path):
    """Check a dataset before training. Returns {"train"/"val"/"test": (folder, images, boxes), "nc": n,
    "names": [...]}; raises HarnessError naming the file (and line) and the fix on anything broken.
    Unchanged datasets are not re-read: a fingerprint of the file list is cached."""
    data = read_yaml(yaml_path)
    names = data.get("names")
    names = list(names.values()) if isinstance(names, dict) else names
    if not isinstance(names, list) or not names:
        raise HarnessError(f"{yaml_path}: no 'names:' list; add e.g. names: ['ship']")
    nc = data.get("nc", len(names))
    if nc != len(names):
        raise HarnessError(f"{yaml_path}: nc: {nc} but {len(names)} names; make them agree")
    splits = {"train": resolve_split(yaml_path, data, "train"), "val": resolve_split(yaml_path, data, "val")}
    if data.get("test"):
        try:
            splits["test"] = resolve_split(yaml_path, data, "test")
        except HarnessError:
            pass  # the test split is never used by training or the metric
    stats = {"nc": nc, "names": names}
    key = _fingerprint(yaml_path, splits.values())
    memo = CACHE_DIR / "checks" / (key + ".json")
    if memo.is_file():
        cached = json.loads(memo.read_text())
        for w in cached.pop("warnings"):
            warn(w)
        return {**stats, **{k: (Path(v[0]), v[1], v[2]) for k, v in cached.items()}}
    warnings = []
    for split, folder in splits.items():
        images, labels = split_files(folder)
        if not images:
            raise HarnessError(f"{folder}: no images in the {split} split; put the split's images there")
        if labels[0] is None or not labels[0].parent.is_dir():
            raise HarnessError(f"{folder}: no labels folder for the {split} split; expected {label_folder(folder)}")
        boxes, problems = 0, []
        for im, lb in zip(images, labels):
            n, problem = check_label_file(lb, nc)
            boxes += n
            problem = problem or check_image_file(im)
            if problem:
                problems.append(problem)
        if len(problems) > MAX_BAD_SHARE * len(images):
            raise HarnessError(f"{problems[0]} ({len(problems)} of {len(images)} {split} files broken); "
                               "fix or delete the broken files")
        if problems:
            warnings.append(f"{len(problems)} broken file(s) in {split}, under {MAX_BAD_SHARE:.0%}: training "
                            f"goes on (Ultralytics skips what it cannot read); first: {problems[0]}")
            warn(warnings[-1])
        stats[split] = (folder, len(images), boxes)
    write_atomic(memo, json.dumps({"warnings": warnings,
                                  **{k: (str(v[0]), v[1], v[2]) for k, v in stats.items() if k in splits}}).encode())
    return stats


def dataset_line(yaml_path, kind, stats):
    splits = " | ".join(f"{s} {stats[s][1]} images {stats[s][2]} boxes" for s in ("train", "val", "test") if s in stats)
    return f"dataset: {kind} {yaml_path} | {splits}"


def write_run_yaml(stats):
    """The YAML training uses: absolute split folders, so paths from other machines just work."""
    data = {"path": str(stats["train"][0].parent.parent), "nc": stats["nc"], "names": stats["names"]}
    data.update({s: str(stats[s][0]) for s in ("train", "val", "test") if s in stats})
    path = RUN_DIR / "data.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path

# ---------------------------------------------------------------------------
# Synthetic stand-in dataset
# ---------------------------------------------------------------------------

# Procedural aerial ship imagery in Kaggle's layout (train/valid/test, one class 'ship'),
# deterministic from a seed. Each label is the axis-aligned bounds of a ship's visible hull pixels;
# rocks, buoys, whitecaps, piers and debris are drawn but never labelled: look-alikes to reject.

SYNTH_SCALES = {"small": {"train": 300, "valid": 80, "test": 80}, "full": {"train": 9697, "valid": 2165, "test": 1573}}
SYNTH_SPLITS = ("train", "valid", "test")
IMG_SIDE_MIN, IMG_SIDE_MAX = 80, 800
EMPTY_FRACTION = 0.10               # share of images with no ship at all
SCENE_KINDS = ("sea", "coast", "harbour")
SCENE_PROBS = (0.55, 0.27, 0.18)
SHIP_LEN_MIN, SHIP_LEN_MAX = 3.0, 300.0
SCALE_MIN, SCALE_MAX = 8, 220       # a scene's typical ship length in px, drawn log-uniform
MAX_SHIPS = 25                      # crowded harbours are capped here
MIN_HULL_AREA, MIN_HULL_SIDE = 6, 2  # smaller visible hulls are not drawn (nobody could label them)
CLOUD_MAX_ALPHA = 0.6               # clouds never fully hide a hull, so every label stays visible
JPEG_QUALITY_MIN, JPEG_QUALITY_MAX = 60, 95
CHUNK_SIZE = 16                     # images per pool task
# relative paths and no 'path:' key, exactly like the Roboflow export, so the folder can be moved
SYNTH_DATA_YAML = "train: train/images\nval: valid/images\ntest: test/images\nnc: 1\nnames: ['ship']\n"
SEA_BGR = [(95, 55, 20), (125, 85, 35), (110, 100, 40), (90, 100, 85), (70, 95, 110), (60, 38, 18), (140, 130, 60), (75, 75, 60)]
SHALLOW_BGR = [(165, 160, 90), (130, 165, 165), (120, 140, 110)]
LAND_BGR = [(55, 100, 70), (60, 110, 110), (75, 105, 135), (130, 130, 130), (115, 150, 175), (40, 70, 50)]
PAVING_BGR = [(105, 105, 105), (165, 165, 160), (90, 100, 100), (60, 95, 75)]
ROOF_BGR = [(150, 150, 150), (200, 200, 200), (60, 70, 150), (120, 110, 100), (80, 80, 80), (150, 120, 90)]
HULL_BGR = [(235, 235, 235), (180, 180, 175), (110, 110, 105), (60, 60, 60), (35, 35, 40), (45, 45, 150), (45, 55, 110), (140, 75, 30), (80, 45, 20), (60, 105, 55)]
DECK_BGR = [(220, 225, 225), (90, 110, 140), (50, 60, 130), (70, 110, 70), (120, 120, 120), (130, 160, 190)]
BOX_BGR = [(40, 40, 170), (150, 90, 40), (40, 120, 200), (60, 120, 60), (170, 170, 170), (30, 60, 120), (200, 200, 200)]
ROCK_BGR = [(60, 65, 70), (70, 90, 105), (100, 105, 110), (45, 50, 55)]
FOAM_BGR = (235, 238, 238)


@dataclass
class Scene:
    image: np.ndarray          # HxWx3 uint8 BGR
    boxes: list                # (x0, y0, x1, y1) per ship, x1/y1 exclusive
    ship_masks: list           # bool HxW visible hull pixels, one per box
    distractor_masks: list     # bool HxW, one per unlabelled object


# ---------- small helpers

def jitter(rng, bgr, amount=12.0):
    # mostly a brightness shift: independent channel noise would turn whites pink or green
    v = np.asarray(bgr, np.float32) + rng.normal(0, amount) + rng.normal(0, amount / 4, 3)
    return tuple(float(x) for x in np.clip(v, 0, 255))


def pick(rng, options):
    return options[rng.integers(len(options))]


def smooth_noise(rng, h, w, cells):
    """Low-frequency field of roughly unit variance: a tiny random grid upscaled (cheap at any size)."""
    gh, gw = max(2, round(cells * h / max(h, w))) + 1, max(2, round(cells * w / max(h, w))) + 1
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def fractal_noise(rng, h, w, cells, octaves=3):
    return sum(smooth_noise(rng, h, w, cells * 2 ** o) * 0.5 ** o for o in range(octaves))


def to_pixels(local, cx, cy, angle):
    """Object coordinates (x along the object, y across) -> image pixels."""
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * local[:, 0] - s * local[:, 1], cy + s * local[:, 0] + c * local[:, 1]], 1)


def rect(x0, x1, y0, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def fixed(pts):
    # cv2 drawing with 3 fractional bits (shift=3), so sub-pixel geometry still matters for small ships
    return np.round(np.asarray(pts) * 8).astype(np.int32)


def fill(img, pts, value):
    cv2.fillPoly(img, [fixed(pts)], value, cv2.LINE_8, 3)


def free_crop(h, w, pts, occupied):
    """A polygon's pixels as (bool crop, x0, y0) within the image; None if none, or if any is occupied."""
    x0, y0 = np.maximum(np.floor(pts.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(pts.max(0)).astype(int) + 1, [w, h])
    if x1 <= x0 or y1 <= y0:
        return None
    crop = np.zeros((y1 - y0, x1 - x0), np.uint8)
    fill(crop, pts - [x0, y0], 1)
    crop = crop.astype(bool)
    return (crop, x0, y0) if crop.any() and not occupied[y0:y1, x0:x1][crop].any() else None


def full_mask(h, w, crop):
    m, x0, y0 = crop
    out = np.zeros((h, w), bool)
    out[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
    return out


def mask_bounds(mask):
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def occupy(occupied, pts):
    # the 3 px outline keeps a 1 px gap between objects, so masks never touch or overlap
    fill(occupied, pts, 1)
    cv2.polylines(occupied, [fixed(pts)], True, 1, 3, cv2.LINE_8, 3)


def blob(rng, radius, aspect, rough=0.3, n=24):
    """Smooth irregular outline (rocks, islets, foam, debris): a few random harmonics, stretched along x."""
    a = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(1, 5):
        r += rough * rng.normal(0, 1) / k * np.cos(k * a + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.3, 2.0)
    return np.stack([r * np.cos(a) * aspect, r * np.sin(a)], 1)


def paint(img, crop, bgr, alpha=1.0):
    """Colour exactly the pixels of a mask crop, so what is drawn is what the mask says."""
    m, x0, y0 = crop
    view = img[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
    view[m] += alpha * (np.float32(bgr) - view[m])


# ---------- background: sea, land, harbour

def pick_image_size(rng):
    long_side = math.exp(rng.uniform(math.log(120), math.log(IMG_SIDE_MAX)))
    aspect = 1.0 if rng.random() < 0.25 else rng.uniform(1.05, 2.2)
    short_side = max(IMG_SIDE_MIN, long_side / aspect)
    h, w = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
    return int(round(h)), int(round(w))


def ripples(rng, h, w, wind):
    """Unit-variance wind ripples: noise smeared along the crests, then rotated to face the wind."""
    side = int(math.hypot(h, w)) + 2  # a square that covers the image at any rotation
    cell = rng.uniform(1.5, 4)
    grid = rng.standard_normal((int(side / cell) + 2,) * 2).astype(np.float32)
    tex = cv2.blur(cv2.resize(grid, (side, side), interpolation=cv2.INTER_CUBIC), (int(cell * rng.uniform(3, 8)) + 1, 1))
    rot = cv2.getRotationMatrix2D((side / 2, side / 2), math.degrees(wind), 1.0)
    rot[:, 2] -= [(side - w) / 2, (side - h) / 2]
    tex = cv2.warpAffine(tex, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return tex / (tex.std() + 1e-6)


def render_sea(rng, h, w):
    """Float BGR sea: coloured base, broad tone patches, two crossing swells, fine chop, optional sun glint."""
    img = np.empty((h, w, 3), np.float32)
    img[:] = jitter(rng, pick(rng, SEA_BGR), 10)
    other = np.float32(jitter(rng, pick(rng, SEA_BGR), 10))
    mix = np.clip(smooth_noise(rng, h, w, rng.uniform(1, 3)) * 0.5 + 0.3, 0, 1) * rng.uniform(0, 0.6)
    img += mix[..., None] * (other - img)  # sediment plumes / depth changes
    img *= (1 + fractal_noise(rng, h, w, rng.uniform(2, 5), 2) * rng.uniform(0.02, 0.08))[..., None]
    xs, ys = np.arange(w, dtype=np.float32)[None], np.arange(h, dtype=np.float32)[:, None]
    wind = rng.uniform(0, 2 * np.pi)
    waves = ripples(rng, h, w, wind) * np.clip(0.7 + 0.5 * smooth_noise(rng, h, w, 3), 0.1, 1.5)
    th, lam = wind + rng.normal(0, 0.3), rng.uniform(10, 40)  # long swell, bent by a noise warp
    warp = smooth_noise(rng, h, w, 3) * rng.uniform(2, 8)
    swell = np.sin((xs * math.cos(th) + ys * math.sin(th)) * (2 * np.pi / lam) + warp)
    img += (waves * rng.uniform(1.5, 7) + swell * rng.uniform(0, 4))[..., None]
    if rng.random() < 0.3:  # sun glint: sparkles on ripple crests under a broad bright halo
        gx, gy, r = rng.uniform(-0.3, 1.3) * w, rng.uniform(-0.3, 1.3) * h, rng.uniform(0.3, 1.0) * max(h, w)
        halo = np.exp(-((xs - gx) ** 2 + (ys - gy) ** 2) / r ** 2)
        img += (halo * (rng.uniform(10, 40) + np.clip(waves - 1.5, 0, None) ** 2 * rng.uniform(10, 50)))[..., None]
    return img


def add_land(rng, img, harbour):
    """Land on one side of a (noisy for coasts, straight for quays) shoreline. Returns mask and quay frame."""
    h, w = img.shape[:2]
    ang = rng.uniform(0, 2 * np.pi)
    n = np.array([math.cos(ang), math.sin(ang)])
    extent = abs(w / 2 * n[0]) + abs(h / 2 * n[1])
    offset = rng.uniform(-0.1, 0.6) * extent
    xs, ys = np.arange(w, dtype=np.float32)[None], np.arange(h, dtype=np.float32)[:, None]
    f = (xs - w / 2) * n[0] + (ys - h / 2) * n[1] - offset
    if not harbour:
        f = f + fractal_noise(rng, h, w, 2, 3) * rng.uniform(0.08, 0.3) * extent
    land = f > 0
    tex = np.empty((h, w, 3), np.float32)
    tex[:] = jitter(rng, (130, 130, 130) if harbour else pick(rng, LAND_BGR), 12)
    other = np.float32(jitter(rng, pick(rng, PAVING_BGR if harbour else LAND_BGR), 12))
    mix = np.clip(fractal_noise(rng, h, w, rng.uniform(3, 8), 3) * 0.6 + 0.2, 0, 1)
    tex += mix[..., None] * (other - tex)  # vegetation / bare ground / paving patches
    tex *= (1 + fractal_noise(rng, h, w, 12, 2) * 0.08)[..., None]
    for _ in range(rng.integers(20, 80) if harbour else rng.integers(0, 15)):  # buildings, sheds, yards
        sz = rng.uniform(0.01, 0.06) * max(h, w)
        pts = to_pixels(rect(0, sz, 0, sz * rng.uniform(0.3, 1)), rng.uniform(0, w), rng.uniform(0, h), ang + rng.normal(0, 0.05))
        fill(tex, pts, jitter(rng, pick(rng, ROOF_BGR), 15))
    tex += cv2.resize(rng.standard_normal((h // 2 + 1, w // 2 + 1)).astype(np.float32), (w, h))[..., None] * 6
    dist = cv2.distanceTransform(land.astype(np.uint8), cv2.DIST_L2, 3)
    edge = (dist > 0) & (dist < rng.uniform(2, 10))  # quay edge or beach
    tex[edge] = jitter(rng, (170, 170, 165) if harbour else (150, 190, 210), 10)
    water_dist = cv2.distanceTransform((~land).astype(np.uint8), cv2.DIST_L2, 3)
    shallow = np.exp(-water_dist / rng.uniform(3, 25)) * rng.uniform(0.1, 0.3 if harbour else 0.7)
    img += shallow[..., None] * (np.float32(jitter(rng, pick(rng, SHALLOW_BGR), 10)) - img)
    img[land] = tex[land]
    quay = np.array([w / 2, h / 2]) + n * offset  # a point on the shoreline; -n points to the water
    return land, quay, n


# ---------- ships

def hull_outline(rng, length, beam):
    """Hull in ship coordinates (bow at +x): straight sides, pointed ogive bow, square or rounded stern."""
    half, bow = beam / 2, length * rng.uniform(0.12, 0.35)
    t = np.linspace(0, 1, 7)
    bow_side = np.stack([length / 2 - bow + t * bow, half * (1 - t ** rng.uniform(1.5, 3))], 1)
    if rng.random() < 0.5:
        a = np.linspace(0, np.pi / 2, 5)
        r = min(half * rng.uniform(0.6, 1.5), length * 0.2)
        stern = np.stack([-length / 2 + r * (1 - np.cos(a)), half * np.sin(a)], 1)
    else:
        stern = np.array([[-length / 2, 0], [-length / 2, half]])
    side = np.vstack([stern, bow_side])
    return np.vstack([side, side[::-1][1:-1] * [1, -1]])


def make_ship(rng, h, w, occupied, length, beam, cx, cy, angle, moving):
    """Place one ship if its visible hull is big enough and free; returns a ship dict or None."""
    pts = to_pixels(hull_outline(rng, length, beam), cx, cy, angle)
    crop = free_crop(h, w, pts, occupied)
    if crop is None:
        return None
    ys, xs = np.nonzero(crop[0])
    if len(xs) < MIN_HULL_AREA or np.ptp(xs) + 1 < MIN_HULL_SIDE or np.ptp(ys) + 1 < MIN_HULL_SIDE:
        return None
    occupy(occupied, pts)
    return dict(pts=pts, crop=crop, length=length, beam=beam, cx=cx, cy=cy, angle=angle, moving=moving)


def ship_dims(rng, scale, max_len=SHIP_LEN_MAX):
    """(length, beam) around the scene's typical ship length; length/beam between 3 and 8."""
    length = float(np.clip(scale * math.exp(rng.normal(0, 0.45)), SHIP_LEN_MIN, min(max_len, SHIP_LEN_MAX)))
    return length, max(1.5, length / rng.uniform(3, 8))


def plan_open_ships(rng, h, w, occupied, count, scale):
    ships = []
    for _ in range(count * 15):
        if len(ships) >= count:
            break
        length, beam = ship_dims(rng, scale)
        cx, cy = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h  # some get cut by the border
        ship = make_ship(rng, h, w, occupied, length, beam, cx, cy, rng.uniform(0, 2 * np.pi), rng.random() < 0.6)
        ships += [ship] if ship else []
    return ships


def plan_harbour(rng, h, w, occupied, quay, n, scale, distractors, img, shade, sun, max_abreast):
    """Piers sticking out from the quay, with ships moored alongside, several abreast."""
    along, out = np.array([-n[1], n[0]]), -n
    out_ang, span = math.atan2(out[1], out[0]), max(h, w)
    pier_bgr, piers, ships = jitter(rng, pick(rng, [(175, 175, 170), (90, 110, 130), (140, 140, 135)]), 8), [], []
    for s in np.sort(rng.uniform(-0.7, 0.7, rng.integers(1, 5))) * span:  # all piers first: ships must not end up under one
        plen, pw = rng.uniform(0.15, 0.6) * span, max(3.0, rng.uniform(0.05, 0.3) * scale)
        base = quay + along * s
        pts = to_pixels(rect(-4, plen, -pw / 2, pw / 2), base[0], base[1], out_ang)
        crop = free_crop(h, w, pts, np.zeros_like(occupied))  # piers may cross the quay and each other
        if crop is None:
            continue
        fill(shade, pts + sun * pw * 0.3, 0.65)
        paint(img, crop, pier_bgr)
        occupy(occupied, pts)
        distractors.append(crop)
        piers.append((base, plen, pw))
    for base, plen, pw in piers:
        for side in (-1, 1):  # berths along each side of the pier, each 0..max_abreast ships deep
            x = rng.uniform(0, 0.3) * plen
            while x < plen:
                length, beam = ship_dims(rng, scale, plen)
                offset = pw / 2
                for _ in range(rng.integers(0, max_abreast + 1)):
                    offset += rng.uniform(2, 4) + beam / 2
                    c = base + out * (x + length / 2) + along * side * offset
                    ship = make_ship(rng, h, w, occupied, length, beam, c[0], c[1], out_ang + np.pi * rng.integers(2), False)
                    if ship is None:
                        break
                    ships.append(ship)
                    offset += beam / 2
                    length, beam = length * rng.uniform(0.8, 1.2), beam * rng.uniform(0.8, 1.2)
                x += length + 2 + rng.uniform(0, 0.5 * length)
    for _ in range(rng.integers(0, 2 * max_abreast + 1)):  # moored along the quay between piers
        length, beam = ship_dims(rng, scale)
        c = quay + along * rng.uniform(-0.7, 0.7) * span + out * (rng.uniform(2, 4) + beam / 2)
        ship = make_ship(rng, h, w, occupied, length, beam, c[0], c[1], math.atan2(along[1], along[0]), False)
        ships += [ship] if ship else []
    return ships[:MAX_SHIPS]  # the dropped ones leave only an empty berth behind


def fading_line(rng, foam, p0, p1, strength, width0, width1, wobble, steps=8):
    """Foam stroke that fades (and widens) from p0 to p1, wobbling sideways like churned water."""
    for i in range(steps):
        a, b = p0 + (p1 - p0) * i / steps, p0 + (p1 - p0) * (i + 1) / steps + rng.normal(0, wobble + 1e-9, 2)
        width = max(1, int(width0 + (width1 - width0) * i / steps))
        cv2.line(foam, fixed(a), fixed(b), strength * (1 - i / steps), width, cv2.LINE_AA, 3)


def draw_wake(rng, foam, ship):
    """Turbulent trail plus the two Kelvin arms (about 19.5 degrees) behind a moving ship."""
    d = np.array([math.cos(ship["angle"]), math.sin(ship["angle"])])
    stern = np.array([ship["cx"], ship["cy"]]) - d * ship["length"] / 2
    wake_len, beam = ship["length"] * rng.uniform(0.8, 5), ship["beam"]
    fading_line(rng, foam, stern, stern - d * wake_len, 0.9, beam * 0.6, beam * 1.5, beam * 0.15)
    for sign in (-1, 1):
        a = ship["angle"] + np.pi + sign * math.radians(19.5)
        tip = stern + np.array([math.cos(a), math.sin(a)]) * wake_len * 0.7
        fading_line(rng, foam, stern, tip, rng.uniform(0.1, 0.35), beam / 4, beam / 4, 0)


def draw_ship(rng, img, ship):
    """Hull, deck and superstructure, painted only inside the hull mask."""
    m, x0, y0 = ship["crop"]
    view = img[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
    layer = view.copy()
    L, B = ship["length"], ship["beam"]
    put = lambda local, bgr: fill(layer, to_pixels(local, ship["cx"] - x0, ship["cy"] - y0, ship["angle"]), bgr)
    fill(layer, ship["pts"] - [x0, y0], jitter(rng, pick(rng, HULL_BGR), 10))
    if L >= 12:
        kind = pick(rng, ["cargo", "tanker", "boat", "boat"] if L > 60 else ["boat", "boat", "barge"])
        deck = jitter(rng, pick(rng, DECK_BGR), 12)
        put(rect(-0.42 * L, 0.3 * L, -0.36 * B, 0.36 * B), deck)
        cabin = rect(-0.45 * L, -0.32 * L, -0.3 * B, 0.3 * B) if kind != "boat" else rect(-0.25 * L, 0.08 * L, -0.28 * B, 0.28 * B)
        put(cabin, jitter(rng, pick(rng, [(225, 225, 225), (200, 200, 200), (160, 160, 160)]), 12))
        if kind == "cargo":
            n_bays = int(rng.integers(3, 10))
            for i in range(n_bays):
                bx = -0.27 * L + i * 0.55 * L / n_bays
                if rng.random() < 0.85:
                    put(rect(bx, bx + 0.5 * L / n_bays, -0.34 * B, 0.34 * B), jitter(rng, pick(rng, BOX_BGR), 15))
        elif kind == "tanker" and B >= 6:
            put(rect(-0.28 * L, 0.3 * L, -0.04 * B - 0.5, 0.04 * B + 0.5), (190, 190, 190))
        elif kind == "boat" and B >= 4:
            put(rect(0.02 * L, 0.08 * L, -0.25 * B, 0.25 * B), jitter(rng, (60, 50, 40), 10))  # windscreen
    view[m] = layer[m]


# ---------- distractors (never labelled)

def add_rocks(rng, h, w, img, occupied, foam, shade, sun, distractors, scale):
    for _ in range(rng.integers(1, 4) if rng.random() < 0.35 else 0):
        radius = scale * rng.uniform(0.1, 1.0)
        aspect = rng.uniform(1.5, 4) if rng.random() < 0.4 else 1.0  # hull-shaped look-alikes
        local, pose = blob(rng, radius, aspect), (rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * np.pi))
        pts = to_pixels(local, *pose)
        crop = free_crop(h, w, pts, occupied)
        if crop is None:
            continue
        fill(shade, pts + sun * radius * 0.2, 0.7)
        paint(img, crop, jitter(rng, pick(rng, ROCK_BGR), 12))
        if radius > 12 and rng.random() < 0.5:  # vegetated islet top; the outline is star-shaped, so it stays inside
            fill(img, to_pixels(local * 0.6, *pose), jitter(rng, LAND_BGR[0], 12))
        cv2.polylines(foam, [fixed(pts)], True, rng.uniform(0.3, 0.8), 2, cv2.LINE_AA, 3)  # surf
        occupy(occupied, pts)
        distractors.append(crop)


def add_small_distractors(rng, h, w, img, occupied, ships, distractors, rough):
    """Whitecaps (often right next to ships), buoys and floating debris."""
    n_caps, n_buoys, n_debris = rng.poisson(rough * 8), rng.poisson(0.8), rng.poisson(0.8)
    for i in range(n_caps + n_buoys + n_debris):
        if i < n_caps:
            near = ships[rng.integers(len(ships))] if ships and rng.random() < 0.4 else None
            local, bgr, alpha = blob(rng, rng.uniform(0.5, 2.5), rng.uniform(1, 2.5), 0.6), FOAM_BGR, rng.uniform(0.3, 0.8)
        elif i < n_caps + n_buoys:
            near, local, alpha = None, blob(rng, rng.uniform(1, 2.5), 1.0, 0.05, 8), 1.0
            bgr = pick(rng, [(30, 30, 200), (30, 200, 230), (60, 150, 40), (240, 240, 240)])
        else:
            near, local, alpha = None, blob(rng, rng.uniform(1.5, 5), rng.uniform(1, 2.5), 0.5, 8), rng.uniform(0.6, 1)
            bgr = pick(rng, [(60, 90, 120), (150, 150, 150), (210, 210, 210), (40, 60, 70)])
        c = rng.uniform(0, 1, 2) * [w, h] if near is None else rng.normal([near["cx"], near["cy"]], near["length"] * 0.8)
        pts = to_pixels(local, c[0], c[1], rng.uniform(0, 2 * np.pi))
        crop = free_crop(h, w, pts, occupied)
        if crop is None:
            continue
        paint(img, crop, jitter(rng, bgr, 10), alpha)
        occupy(occupied, pts)
        distractors.append(crop)


# ---------- atmosphere and sensor

def add_clouds_and_haze(rng, img, sun):
    h, w = img.shape[:2]
    if rng.random() < 0.25:
        field = fractal_noise(rng, h, w, rng.uniform(1.5, 4), 4)
        alpha = np.clip((field - rng.uniform(-0.5, 1.0)) * rng.uniform(0.15, 0.5), 0, 1) * CLOUD_MAX_ALPHA
        shift = np.float32([[1, 0, sun[0] * rng.uniform(5, 40)], [0, 1, sun[1] * rng.uniform(5, 40)]])
        shadow = cv2.warpAffine(alpha, shift, (w, h), borderMode=cv2.BORDER_REFLECT)
        img *= (1 - shadow * rng.uniform(0.2, 0.5))[..., None]  # clouds cast shadows a little way off
        img += alpha[..., None] * (np.float32(jitter(rng, (235, 232, 228), 8)) - img)
    if rng.random() < 0.35:
        alpha = rng.uniform(0.05, 0.35) * np.clip(1 + 0.3 * smooth_noise(rng, h, w, 2), 0.5, 1.5)
        img += alpha[..., None] * (np.float32(jitter(rng, (200, 190, 180), 12)) - img)


def apply_sensor(rng, img):
    h, w = img.shape[:2]
    img *= np.float32(rng.uniform(0.95, 1.05, 3)) * rng.uniform(0.85, 1.15)  # white balance, exposure
    if rng.random() < 0.2:  # upscaled low-resolution source
        f = rng.uniform(1.5, 3)
        small = cv2.resize(img, (max(8, int(w / f)), max(8, int(h / f))), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.7:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    img += rng.normal(0, rng.uniform(1, 5), (h, w, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------- one scene

def render_scene(rng: np.random.Generator) -> Scene:
    """One aerial scene: sea (maybe coast or harbour), ships, distractors, weather, sensor effects."""
    h, w = pick_image_size(rng)
    kind = SCENE_KINDS[rng.choice(3, p=SCENE_PROBS)]
    img = render_sea(rng, h, w)
    occupied = np.zeros((h, w), np.uint8)
    foam, shade, distractors, ships = np.zeros((h, w), np.float32), np.ones((h, w), np.float32), [], []
    sun = rng.normal(0, 1, 2)
    sun /= np.linalg.norm(sun)
    # one ground resolution per scene: ships in a scene have comparable sizes, like a real photo
    scale = math.exp(rng.uniform(math.log(SCALE_MIN), math.log(max(SCALE_MIN + 4, min(SCALE_MAX, 0.5 * max(h, w))))))
    has_ships = rng.random() >= EMPTY_FRACTION
    if kind != "sea":
        land, quay, n = add_land(rng, img, kind == "harbour")
        occupied[land] = 1
        if kind == "harbour":  # an empty harbour still gets its piers
            ships += plan_harbour(rng, h, w, occupied, quay, n, scale, distractors, img, shade, sun, 3 * has_ships)
    add_rocks(rng, h, w, img, occupied, foam, shade, sun, distractors, scale)
    static = occupied.copy()
    if has_ships:
        count = int(rng.integers(6, 15)) if rng.random() < 0.08 else int(rng.choice([1, 1, 2, 2, 3, 4, 5]))
        ships += plan_open_ships(rng, h, w, occupied, count if kind != "harbour" else int(rng.integers(0, 3)), scale)
    for ship in ships:
        fill(shade, ship["pts"] + sun * (0.5 + ship["beam"] * rng.uniform(0.1, 0.4)), rng.uniform(0.5, 0.75))
        if ship["moving"]:
            draw_wake(rng, foam, ship)
    img *= cv2.GaussianBlur(shade, (0, 0), 0.7)[..., None]
    foam = cv2.GaussianBlur(foam, (0, 0), rng.uniform(0.8, 2.0)) * np.clip(1 + 0.5 * smooth_noise(rng, h, w, 12), 0, 2)
    foam = np.clip(foam, 0, 1) * (static == 0)
    img += foam[..., None] * (np.float32(FOAM_BGR) - img)
    add_small_distractors(rng, h, w, img, occupied, ships, distractors, rng.uniform(0, 1) ** 2)  # on top of wakes
    for ship in ships:
        draw_ship(rng, img, ship)
    add_clouds_and_haze(rng, img, sun)
    image = apply_sensor(rng, img)
    masks = [full_mask(h, w, ship["crop"]) for ship in ships]
    return Scene(image, [mask_bounds(m) for m in masks], masks, [full_mask(h, w, c) for c in distractors])


# ---------- dataset on disk

def synth_image_name(seed, split, index):
    digest = hashlib.md5(f"{seed}/{split}/{index}".encode()).hexdigest()
    return f"synth_{index:05d}_jpg.rf.{digest}.jpg"


def label_rows(boxes, h, w):
    return "".join(f"0 {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n"
                   for x0, y0, x1, y1 in boxes)


def write_chunk(root, seed, split, indices):
    split_no = SYNTH_SPLITS.index(split)
    for index in indices:
        rng = np.random.default_rng([seed, split_no, index])
        scene = render_scene(rng)
        quality = int(rng.integers(JPEG_QUALITY_MIN, JPEG_QUALITY_MAX + 1))
        ok, jpg = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok, "JPEG encoding failed"
        name = synth_image_name(seed, split, index)
        with open(Path(root, split, "images", name), "wb") as f:
            f.write(jpg.tobytes())
        h, w = scene.image.shape[:2]
        with open(Path(root, split, "labels", name[:-4] + ".txt"), "w") as f:
            f.write(label_rows(scene.boxes, h, w))
    return len(indices)


def generate_synthetic(out_dir, counts: dict[str, int], seed: int = 0, workers: int | None = None) -> Path:
    """Write the dataset into out_dir (which must not exist) atomically; returns the data.yaml path."""
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} already exists; not touching it")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # leftover of an earlier crash of a process with our pid
    try:
        for split in SYNTH_SPLITS:
            for sub in ("images", "labels"):
                (tmp / split / sub).mkdir(parents=True)
        (tmp / "data.yaml").write_text(SYNTH_DATA_YAML)
        jobs = [(split, list(range(i, min(i + CHUNK_SIZE, counts.get(split, 0)))))
                for split in SYNTH_SPLITS for i in range(0, counts.get(split, 0), CHUNK_SIZE)]
        # spawn, not fork: a child forked after cv2 has started its thread pool hangs in its first cv2 call.
        # One cv2 thread per worker: more would only fight the pool's processes for cores.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers or os.cpu_count(), spawn, cv2.setNumThreads, (1,)) as pool:
            for fut in [pool.submit(write_chunk, str(tmp), seed, split, idx) for split, idx in jobs]:
                fut.result()
        try:
            os.rename(tmp, out)
        except OSError:
            if not out.exists():
                raise
            shutil.rmtree(tmp)  # another process finished the same dataset first: use theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "data.yaml"


def save_sample_mosaic(data_yaml, out_path, n: int = 12, seed: int = 0, tile: int = 256) -> Path:
    """Grid of n train images with their labels drawn in green, for a quick look or the README."""
    data_yaml = Path(data_yaml)
    images = sorted((data_yaml.parent / yaml.safe_load(data_yaml.read_text())["train"]).glob("*.jpg"))
    chosen = np.random.default_rng(seed).choice(len(images), min(n, len(images)), replace=False)
    cols = math.ceil(math.sqrt(len(chosen)))
    rows = math.ceil(len(chosen) / cols)
    mosaic = np.full((rows * tile, cols * tile, 3), 40, np.uint8)
    for k, i in enumerate(chosen):
        img = cv2.imread(str(images[i]))
        h, w = img.shape[:2]
        s = tile / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        label = images[i].parent.parent / "labels" / (images[i].stem + ".txt")
        for row in label.read_text().splitlines():
            _, cx, cy, bw, bh = map(float, row.split())
            x0, y0, x1, y1 = (cx - bw / 2) * w * s, (cy - bh / 2) * h * s, (cx + bw / 2) * w * s, (cy + bh / 2) * h * s
            cv2.rectangle(img, (round(x0), round(y0)), (round(x1), round(y1)), (0, 255, 0), 1)
        r, c = divmod(k, cols)
        mosaic[r * tile:r * tile + img.shape[0], c * tile:c * tile + img.shape[1]] = img
    cv2.imwrite(str(out_path), mosaic, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return Path(out_path)

# ---------------------------------------------------------------------------
# GPU data pipeline: decode once, keep the images on the GPU, augment whole batches there
# ---------------------------------------------------------------------------
# Ultralytics' CPU workers (decode, mosaic, affine, HSV and flips, one image at a time) feed about a
# third of what the model step takes on an H100. Here the training images are decoded once per run,
# before the clock starts, and kept as uint8 on the GPU (in pinned host memory when they don't fit).
# Each batch is then drawn in two halves. The CPU draws every random choice with Ultralytics' own
# formulas and moves the boxes in numpy (a few hundred rows). The GPU does the pixels: one Triton kernel
# does mosaic, affine and flips together, reading each output pixel straight from the decoded images,
# and a second one mixup and HSV (plain torch does the same on the CPU). While the GPU trains on one batch,
# a thread plans the batch after next and the GPU has the next one drawn; nothing waits for the GPU, and
# validation stays Ultralytics' own.

PAD = 114                    # Ultralytics' grey for letterbox padding and warp borders
GPU_SHARE = 0.5              # decoded images go on the GPU while they take at most this share of its free memory
DECODE_THREADS = min(16, os.cpu_count() or 1)  # cv2 releases the GIL: threads decode in parallel
GPU_DATA_ENV = "AUTORESEARCH_GPU_DATA"         # how train.py's GPU_DATA reaches DDP workers
# Ultralytics knobs the GPU path does not implement, with the only value it accepts.
GPU_UNSUPPORTED = {"copy_paste": 0.0, "cutmix": 0.0, "bgr": 0.0, "rect": False}


def check_gpu_data_args(args):
    """Refuse knobs the GPU pipeline would otherwise ignore: say so at start-up, not never."""
    bad = [f"{k}={getattr(args, k)!r}" for k, ok in GPU_UNSUPPORTED.items() if getattr(args, k) != ok]
    if bad:
        raise HarnessError(f"{', '.join(bad)} is not supported by the GPU data pipeline; set GPU_DATA = False "
                           "in train.py to use Ultralytics' CPU dataloader for it")
    if args.cache:
        warn(f"cache={args.cache!r} has no effect with GPU_DATA = True: the training images are decoded once anyway")


def load_resized(path, imgsz):
    """One image as Ultralytics' training loader reads it: BGR, long side resized to imgsz (None if
    it cannot be decoded)."""
    from ultralytics.utils.patches import imread
    im = imread(str(path))
    if im is None:
        return None
    h0, w0 = im.shape[:2]
    r = imgsz / max(h0, w0)
    if r != 1:
        size = (min(math.ceil(w0 * r), imgsz), min(math.ceil(h0 * r), imgsz))
        im = cv2.resize(im, size, interpolation=cv2.INTER_LINEAR)
    return im


def decode_images(files, imgsz, device, chunk=256):
    """All training images, each at the top-left of an imgsz x imgsz grey tile: (uint8 tensor [N, S, S, 3]
    on the GPU if it fits, else in pinned host memory; numpy array [N, 2] of each image's (h, w), (0, 0)
    for one that cannot be decoded)."""
    import torch
    n, s = len(files), imgsz
    cuda = device.type == "cuda"
    on_gpu = cuda and n * s * s * 3 < GPU_SHARE * torch.cuda.mem_get_info(device)[0]
    images = torch.empty((n, s, s, 3), dtype=torch.uint8, device=device if on_gpu else "cpu",
                         pin_memory=cuda and not on_gpu)
    staging = torch.empty((min(chunk, n), s, s, 3), dtype=torch.uint8, pin_memory=cuda) if on_gpu else None
    sizes = np.zeros((n, 2), np.int64)

    def decode(i, out):
        im = load_resized(files[i], s)
        out.fill(PAD)
        if im is not None:
            sizes[i] = im.shape[:2]
            out[:im.shape[0], :im.shape[1]] = im

    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for a in range(0, n, chunk):
            b = min(a + chunk, n)
            host = staging[:b - a] if on_gpu else images[a:b]
            list(pool.map(decode, range(a, b), host.numpy()))
            if on_gpu:
                images[a:b].copy_(host)
    return images, sizes


def pack_labels(labels):
    """Every box of the dataset in one array of rows (cls, x, y, w, h), normalized to its image, with where
    each image's rows start and how many it has."""
    counts = np.array([len(lb["cls"]) for lb in labels], np.int64)
    rows = [np.hstack([lb["cls"].reshape(-1, 1), lb["bboxes"].reshape(-1, 4)]) for lb in labels]
    boxes = np.concatenate(rows).astype(np.float32) if counts.sum() else np.zeros((0, 5), np.float32)
    return boxes, np.cumsum(counts) - counts, counts


def affine_matrices(rng, n, sizes, imgsz, hyp):
    """Ultralytics' RandomPerspective matrices M = T @ S @ R @ P @ C for n canvases of the given (w, h);
    also each one's scale, for its box filter."""
    def uniform(a, b=None):
        return rng.uniform(-a, a, n) if b is None else rng.uniform(a, b, n)
    m = np.tile(np.eye(3), (n, 1, 1))
    c, p, r, sh, t = m.copy(), m.copy(), m.copy(), m.copy(), m.copy()
    c[:, 0, 2], c[:, 1, 2] = -sizes[:, 0] / 2, -sizes[:, 1] / 2
    p[:, 2, 0], p[:, 2, 1] = uniform(hyp.perspective), uniform(hyp.perspective)
    angle = np.radians(uniform(hyp.degrees))
    lo, hi = hyp.scale if isinstance(hyp.scale, (tuple, list)) else (1 - hyp.scale, 1 + hyp.scale)
    scale = uniform(lo, hi)
    cos, sin = scale * np.cos(angle), scale * np.sin(angle)  # cv2.getRotationMatrix2D about the origin
    r[:, 0, 0], r[:, 0, 1], r[:, 1, 0], r[:, 1, 1] = cos, sin, -sin, cos
    sh[:, 0, 1], sh[:, 1, 0] = np.tan(np.radians(uniform(hyp.shear))), np.tan(np.radians(uniform(hyp.shear)))
    t[:, 0, 2] = uniform(0.5 - hyp.translate, 0.5 + hyp.translate) * imgsz
    t[:, 1, 2] = uniform(0.5 - hyp.translate, 0.5 + hyp.translate) * imgsz
    return t @ sh @ r @ p @ c, scale


def warp_boxes(xyxy, m):
    """Ultralytics' box transform: the four corners through M, then their enclosing box."""
    corners = xyxy[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(-1, 4, 2)
    pts = np.concatenate([corners, np.ones_like(corners[..., :1])], -1) @ m.transpose(0, 2, 1)
    pts = pts[..., :2] / pts[..., 2:]
    return np.concatenate([pts.min(1), pts.max(1)], 1)


class GpuDataset:
    """The training set as the GPU pipeline sees it: decoded images, packed boxes, the augmentation
    hyperparameters (Ultralytics' names and meanings), and Ultralytics' dataset for its labels."""

    def __init__(self, dataset, hyp, device):
        import torch
        t = time.time()
        self.dataset, self.labels, self.device = dataset, dataset.labels, device
        self.imgsz = dataset.imgsz
        self.hyp = hyp
        self.images, self.sizes = decode_images(dataset.im_files, self.imgsz, device)
        self.boxes, self.start, self.count = pack_labels(self.labels)
        # The dataset check lets a few broken files through with a warning; train without them.
        self.index = np.flatnonzero(self.sizes[:, 0])
        for i in np.flatnonzero(self.sizes[:, 0] == 0)[:3]:
            warn(f"{dataset.im_files[i]} cannot be decoded: training goes on without it")
        if not len(self.index):
            raise HarnessError(f"no training image could be decoded ({dataset.im_files[0]}, ...); check the dataset")
        # Images that did not fit on the GPU: each batch's tiles are gathered and copied over (fetch).
        self.gather = self.images.device != device
        self.copy_stream = torch.cuda.Stream(device) if self.gather else None
        if device.type == "cuda":  # compile the Triton kernels now, before the training clock starts
            p = self.plan(self.index[:1], np.random.default_rng(0))
            self.render(torch.as_tensor(p["tiles"]), torch.as_tensor(p["params"]))
        where = "host memory" if self.gather else "GPU" if device.type == "cuda" else "memory"
        print(f"GPU data: {len(self)} training images decoded in {time.time() - t:.1f} s, "
              f"{self.images.numel() / 2**30:.1f} GB in {where}")

    def __len__(self):  # decodable images
        return len(self.index)

    def close_mosaic(self, hyp):
        """Ultralytics' close_mosaic: the last epochs train on plain images."""
        self.hyp.mosaic = self.hyp.mixup = 0.0

    def plan(self, idx, rng):
        """The CPU half of a batch: every random choice, and the boxes moved to their final place."""
        from ultralytics.data.augment import RandomPerspective
        hyp, s, b = self.hyp, self.imgsz, len(idx)
        mosaic = rng.uniform(0, 1, b) <= hyp.mosaic  # Ultralytics skips a mix when uniform > p
        tiles = self.index[rng.integers(0, len(self), (b, 4))]
        tiles[:, 0] = idx
        hw = self.sizes[tiles]                         # (h, w) of each tile
        # Mosaic layout (Ultralytics' Mosaic, n=4): tiles meet at a random centre of a 2S x 2S canvas.
        xc = rng.uniform(s // 2, 2 * s - s // 2, b).astype(np.int64)
        yc = rng.uniform(s // 2, 2 * s - s // 2, b).astype(np.int64)
        ox = np.stack([xc - hw[:, 0, 1], xc, xc - hw[:, 2, 1], xc], 1)
        oy = np.stack([yc - hw[:, 0, 0], yc - hw[:, 1, 0], yc, yc], 1)
        big = 4 * s  # a plain image: tile 0 alone, at the origin, and every pixel in its quadrant
        ox[~mosaic], oy[~mosaic] = 0, 0
        xc[~mosaic], yc[~mosaic] = big, big
        canvas = np.where(mosaic[:, None], 2 * s, hw[:, 0, ::-1]).astype(np.float64)  # (w, h)
        m, scale = affine_matrices(rng, b, canvas, s, hyp)
        flip_ud, flip_lr = rng.uniform(0, 1, b) < hyp.flipud, rng.uniform(0, 1, b) < hyp.fliplr
        mix = rng.uniform(0, 1, b) <= hyp.mixup
        ratio = rng.beta(32.0, 32.0, b)
        partner = (np.arange(b) + rng.integers(1, max(b, 2), b)) % b  # another image of this batch
        r = rng.uniform(-1, 1, (b, 3)) * [hyp.hsv_h, hyp.hsv_s, hyp.hsv_v] + [0, 1, 1]  # hue shift, gains

        # Flips act on the warped image: fold them into M (pixels span 0..S-1, boxes 0..S).
        flip_px, flip_box = np.tile(np.eye(3), (b, 1, 1)), np.tile(np.eye(3), (b, 1, 1))
        for f, axis in ((flip_lr, 0), (flip_ud, 1)):
            flip_px[f, axis, axis], flip_px[f, axis, 2] = -1, s - 1
            flip_box[f, axis, axis], flip_box[f, axis, 2] = -1, s
        minv = np.linalg.inv(flip_px @ m)  # the GPU samples backwards: output pixel -> canvas

        # Boxes of the tiles in use, in canvas pixels.
        use = np.zeros((b, 4), bool)
        use[:, 0], use[mosaic, 1:] = True, True
        sample, k = np.nonzero(use)
        n = self.count[tiles[sample, k]]
        rows = np.repeat(self.start[tiles[sample, k]], n) + np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        sample, k = np.repeat(sample, n), np.repeat(k, n)
        cls, xywh = self.boxes[rows, :1], self.boxes[rows, 1:].astype(np.float64)
        wh = hw[sample, k, ::-1]
        xyxy = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1) * np.tile(wh, 2)
        xyxy += np.stack([ox[sample, k], oy[sample, k]] * 2, 1)
        in_mosaic = mosaic[sample]
        xyxy[in_mosaic] = xyxy[in_mosaic].clip(0, 2 * s)  # Mosaic clips to its canvas, drops empty boxes
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        sample, cls, before = sample[keep], cls[keep], xyxy[keep]
        after = warp_boxes(before, flip_box[sample] @ m[sample]).clip(0, s)
        # Ultralytics' own filter: big enough, not mostly cut off, not a sliver.
        keep = RandomPerspective.box_candidates(box1=(before * scale[sample, None]).T, box2=after.T)
        sample, cls, after = sample[keep], cls[keep], after[keep]
        # MixUp: a blended image carries its partner's boxes too.
        extra = np.nonzero(mix[:, None] & (partner[:, None] == sample[None]))
        sample = np.concatenate([sample, extra[0]])
        cls, after = np.concatenate([cls, cls[extra[1]]]), np.concatenate([after, after[extra[1]]])
        xywhn = np.concatenate([(after[:, :2] + after[:, 2:]) / 2, after[:, 2:] - after[:, :2]], 1) / s
        order = np.argsort(sample, kind="stable")
        tiles[~mosaic, 1:] = tiles[~mosaic, :1]  # never read for a plain image: fetch() then copies one tile
        params = np.concatenate([minv.reshape(b, 9), xc[:, None], yc[:, None], ox, oy, mix[:, None],  # P_* columns
                                 ratio[:, None], partner[:, None], r], 1).astype(np.float32)
        return dict(tiles=tiles, params=params, batch_idx=sample[order], cls=cls[order], bboxes=xywhn[order])

    def fetch(self, tiles):
        """Where render() reads a batch's tiles from, given plan()'s as a CPU tensor: (store, ids [B, 4] into
        it, a CUDA event to wait for or None). Images kept in host memory: the batch's distinct tiles, gathered
        into pinned memory and copied over on a side stream. GpuLoader calls this in its planning thread, so
        the gather (tens of ms) and the copy overlap the training step; in line they took 0.9 s a batch."""
        import torch
        dev = self.device
        if not self.gather:
            return self.images, tiles.to(dev, non_blocking=True), None
        uniq, ids = torch.unique(tiles, return_inverse=True)
        host = torch.empty((len(uniq), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=dev.type == "cuda")
        torch.index_select(self.images, 0, uniq, out=host)  # into a buffer: ten times faster than images[uniq]
        if dev.type != "cuda":
            return host, ids, None
        with torch.cuda.stream(self.copy_stream):
            store, ids = host.to(dev, non_blocking=True), ids.to(dev, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        return store, ids, ready

    def render(self, tiles, params):
        """The GPU half of a batch, from plan()'s tiles (a CPU tensor, or what fetch() made of it) and params
        (a CPU tensor): [B, 3, S, S] RGB images in 0..255 (half precision on the GPU), as Ultralytics'
        pipeline would draw them for these choices."""
        import torch
        store, ids, ready = self.fetch(tiles) if torch.is_tensor(tiles) else tiles
        if ready is not None:  # copied on the side stream: wait for it, and keep its memory until drawn
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(ready)
            store.record_stream(stream)
            ids.record_stream(stream)
        draw = render_triton if self.device.type == "cuda" else render_torch
        return draw(store, ids, params.to(self.device, non_blocking=True), self.imgsz)


# Where params' columns are (GpuDataset.plan writes them, both renderers read them).
P_MINV, P_XC, P_YC, P_OX, P_OY, P_MIX, P_RATIO, P_PARTNER, P_GAINS, P_COLS = 0, 9, 10, 11, 15, 19, 20, 21, 22, 25


def render_torch(store, ids, params, s):
    """The renderer in plain torch, for the CPU (and the reference the Triton one is tested against)."""
    import torch
    import torch.nn.functional as F
    b = len(ids)
    minv, xc, yc = params[:, P_MINV:P_MINV + 9].view(b, 3, 3), params[:, P_XC:P_XC + 1], params[:, P_YC:P_YC + 1]
    ox, oy = params[:, P_OX:P_OX + 4], params[:, P_OY:P_OY + 4]
    mix, ratio, partner = params[:, P_MIX] > 0, params[:, P_RATIO], params[:, P_PARTNER].long()
    # Where each output pixel comes from on the canvas, then from which tile.
    ys, xs = torch.meshgrid(torch.arange(s, device=store.device), torch.arange(s, device=store.device), indexing="ij")
    src = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3).float() @ minv.transpose(1, 2)
    u, v = src[..., 0] / src[..., 2], src[..., 1] / src[..., 2]
    q = (u >= xc).long() + 2 * (v >= yc).long()
    tu, tv = u - ox.gather(1, q), v - oy.gather(1, q)
    grid = torch.stack([tu * (2 / (s - 1)) - 1, tv * (2 / (s - 1)) - 1, q * (2 / 3) - 1], -1)
    tiles = store[ids.view(-1)].view(b, 4, s, s, 3).permute(0, 4, 1, 2, 3).flip(1).float() - PAD  # BGR -> RGB
    img = F.grid_sample(tiles, grid.view(b, 1, s, s, 3), mode="bilinear", padding_mode="zeros",
                        align_corners=True).squeeze(2) + PAD
    on_canvas = (u >= 0) & (u <= 2 * s - 1) & (v >= 0) & (v <= 2 * s - 1)
    img = torch.where(on_canvas.view(b, 1, s, s), img, torch.full_like(img, PAD))
    r = ratio.view(b, 1, 1, 1)
    img = torch.where(mix.view(b, 1, 1, 1), img * r + img[partner] * (1 - r), img)
    return hsv_jitter(img, params[:, P_GAINS:P_GAINS + 3])


def hsv_jitter(img, gains):
    """Ultralytics' RandomHSV on float RGB in 0..255: hue shifted by gains[:, 0] of a turn, saturation
    and value multiplied by gains[:, 1] and gains[:, 2] (clipped)."""
    import torch
    mx, mn = img.max(1).values, img.min(1).values
    d = mx - mn
    r, g, b = img.unbind(1)
    safe = torch.where(d > 0, d, torch.ones_like(d))
    hue = torch.where(mx == r, ((g - b) / safe) % 6, torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(d > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(mx > 0, d / torch.where(mx > 0, mx, torch.ones_like(mx)), torch.zeros_like(mx))
    hue = (hue + gains[:, 0, None, None]) % 1
    sat = (sat * gains[:, 1, None, None]).clamp(0, 1)
    val = (mx * gains[:, 2, None, None]).clamp(0, 255)
    h6 = hue * 6
    out = [val - val * sat * torch.clamp(torch.minimum((n + h6) % 6, 4 - (n + h6) % 6), 0, 1) for n in (5, 3, 1)]
    return torch.stack(out, 1)


# The same renderer as two Triton kernels: each output pixel is read straight from the decoded images
# and written once, where the torch version materializes four float tiles per image and a dozen
# full-size intermediates. That took about 28 ms of GPU time per 128 images at 640 px, a quarter of
# the GPU's time next to yolo11n's step.
RENDER_BLOCK = 1024  # output pixels per Triton program


def render_triton(store, ids, params, s):
    """render_torch's output (in half precision) from two Triton kernels: warp, then mixup and HSV. The
    images come channels-last (NHWC strides), the layout Ultralytics gives the model on CUDA, so the first
    convolution needs no layout change."""
    import torch
    import triton
    warp, blend_hsv = _triton_kernels()
    b = len(ids)
    grid = (triton.cdiv(s * s, RENDER_BLOCK), b)
    warped = torch.empty((b, s, s, 3), dtype=torch.float16, device=store.device)
    warp[grid](store, ids.contiguous(), params.contiguous(), warped, s, P_COLS, PAD, RENDER_BLOCK)
    out = torch.empty_like(warped)
    blend_hsv[grid](warped, params.contiguous(), out, s, P_COLS, RENDER_BLOCK)
    return out.permute(0, 3, 1, 2)  # [B, 3, S, S] with NHWC strides: .float() / 255 keep them


@functools.cache
def _triton_kernels():
    """Built on first use: Triton is imported only where the GPU path runs (TRITON_INTERPRET=1 runs
    them on the CPU, which is how the tests check them)."""
    import triton
    import triton.language as tl

    @triton.jit
    def warp(store, ids, choices, out, S: tl.constexpr, NP: tl.constexpr, PAD: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = p < S * S
        x, y = (p % S).to(tl.float32), (p // S).to(tl.float32)
        row = choices + b * NP  # this image's params row (an argument named params breaks Triton's binder)
        w = tl.load(row + 6) * x + tl.load(row + 7) * y + tl.load(row + 8)
        u = (tl.load(row + 0) * x + tl.load(row + 1) * y + tl.load(row + 2)) / w
        v = (tl.load(row + 3) * x + tl.load(row + 4) * y + tl.load(row + 5)) / w
        q = (u >= tl.load(row + 9)).to(tl.int32) + 2 * (v >= tl.load(row + 10)).to(tl.int32)
        tu, tv = u - tl.load(row + 11 + q), v - tl.load(row + 15 + q)
        on_canvas = live & (u >= 0) & (u <= 2 * S - 1) & (v >= 0) & (v <= 2 * S - 1)
        tile = store + tl.load(ids + b * 4 + q, mask=live, other=0) * (S * S * 3)
        x0f, y0f = tl.floor(tu), tl.floor(tv)
        fx, fy = tu - x0f, tv - y0f
        x0, y0 = x0f.to(tl.int32), y0f.to(tl.int32)
        for c in tl.static_range(3):
            acc = fx * 0  # not tl.zeros: a jit function, which the interpreter fails on if Triton loaded without it
            for dy in tl.static_range(2):
                for dx in tl.static_range(2):
                    xi, yi = x0 + dx, y0 + dy
                    inside = on_canvas & (xi >= 0) & (xi < S) & (yi >= 0) & (yi < S)
                    px = tl.load(tile + (yi * S + xi) * 3 + (2 - c), mask=inside, other=PAD).to(tl.float32)
                    acc += px * (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
            acc = tl.where(on_canvas, acc, PAD)
            tl.store(out + (b * (S * S) + p) * 3 + c, acc.to(tl.float16), mask=live)  # NHWC

    @triton.jit
    def blend_hsv(img, choices, out, S: tl.constexpr, NP: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(1).to(tl.int64)
        p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        live = p < S * S
        row = choices + b * NP  # this image's params row
        own = img + (b * (S * S) + p) * 3  # NHWC, as warp wrote it
        r = tl.load(own, mask=live, other=0).to(tl.float32)
        g = tl.load(own + 1, mask=live, other=0).to(tl.float32)
        bl = tl.load(own + 2, mask=live, other=0).to(tl.float32)
        ratio = tl.load(row + 20)
        if tl.load(row + 19) > 0:  # MixUp with the partner's warped image
            mate = img + (tl.load(row + 21).to(tl.int64) * (S * S) + p) * 3
            r = r * ratio + tl.load(mate, mask=live, other=0).to(tl.float32) * (1 - ratio)
            g = g * ratio + tl.load(mate + 1, mask=live, other=0).to(tl.float32) * (1 - ratio)
            bl = bl * ratio + tl.load(mate + 2, mask=live, other=0).to(tl.float32) * (1 - ratio)
        # hsv_jitter, pixel by pixel
        mx = tl.maximum(tl.maximum(r, g), bl)
        d = mx - tl.minimum(tl.minimum(r, g), bl)
        safe = tl.where(d > 0, d, 1.0)
        hue = tl.where(mx == r, (g - bl) / safe, tl.where(mx == g, (bl - r) / safe + 2, (r - g) / safe + 4))
        hue = tl.where(d > 0, hue - 6 * tl.floor(hue / 6), 0.0) / 6 + tl.load(row + 22)
        hue = hue - tl.floor(hue)
        sat = tl.minimum(tl.maximum(tl.where(mx > 0, d / tl.where(mx > 0, mx, 1.0), 0.0) * tl.load(row + 23), 0), 1)
        val = tl.minimum(tl.maximum(mx * tl.load(row + 24), 0), 255)
        for c in tl.static_range(3):
            k = 6 * hue + 5 - 2 * c  # n = 5, 3, 1 for r, g, b
            k = k - 6 * tl.floor(k / 6)
            ch = val - val * sat * tl.minimum(tl.maximum(tl.minimum(k, 4 - k), 0), 1)
            tl.store(out + (b * (S * S) + p) * 3 + c, ch.to(tl.float16), mask=live)
    return warp, blend_hsv


class EpochShard:
    """What Ultralytics' trainer reads off a DataLoader's sampler: images per epoch, and set_epoch()."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return self.loader.samples

    def set_epoch(self, epoch):
        self.loader.epoch = epoch


class GpuLoader:
    """Stands in for Ultralytics' training DataLoader (the parts its trainer uses): an epoch is a seeded
    shuffle, split across DDP ranks like DistributedSampler, cut into equal batches augmented on the GPU."""
    num_workers = 0
    drop_last = False

    def __init__(self, data, batch_size, seed, rank=-1, world_size=1):
        self.dataset, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size = max(rank, 0), max(world_size, 1)
        self.epoch = 0
        self.sampler = EpochShard(self)
        self.rng = np.random.default_rng(seed + 1 + self.rank)

    def __len__(self):  # batches per epoch
        return math.ceil(self.samples / self.batch_size)

    @property
    def samples(self):  # images per epoch for this rank: whole batches
        return math.ceil(len(self.dataset) / (self.world_size * self.batch_size)) * self.batch_size

    def reset(self):
        pass

    def __iter__(self):
        order = self.dataset.index[np.random.default_rng(self.seed + self.epoch).permutation(len(self.dataset))]
        # Padded with the epoch's first images to whole batches on every rank, as DistributedSampler pads
        # ranks: a smaller last batch is a new input shape, and cuDNN spent 3.4 to 4.1 s of the budget
        # choosing kernels for it (epoch 1's last batch on an H100).
        order = np.resize(order, self.samples * self.world_size)[self.rank::self.world_size]
        self.epoch += 1
        batches = [order[a:a + self.batch_size] for a in range(0, len(order), self.batch_size)]
        # When the trainer takes a batch, the next one is drawn and the one after that planned:
        # - planned in a thread, the CPU half (the trainer waits for each step's end; planning in line left
        #   the GPU idle 4% of the time). One thread keeps the draws in order: a seed gives the same batches.
        # - drawn one batch ahead, on the trainer's own stream: the GPU draws the next batch (about 1 ms per
        #   128 images at 640 px) while the CPU, just back from the trainer's per-batch sync, launches this
        #   one's forward pass. A side stream's cached blocks grew the memory reserve every epoch.
        with ThreadPoolExecutor(1) as planner:
            ahead = planner.submit(self.plan, batches[0])
            drawn = None
            for i in range(len(batches)):
                p = ahead.result()
                if i + 1 < len(batches):
                    ahead = planner.submit(self.plan, batches[i + 1])
                drawn, done = self.render(p), drawn
                if done is not None:
                    yield done
            yield drawn

    def plan(self, idx):
        """The CPU half of one batch, as tensors ready to copy to the GPU (pinned when there is one)."""
        import torch
        p = self.dataset.plan(idx, self.rng)
        out = {k: torch.as_tensor(p[k], dtype=torch.long if k == "tiles" else torch.float32)
               for k in ("tiles", "params", "batch_idx", "cls", "bboxes")}
        if self.dataset.device.type == "cuda":
            out = {k: v.pin_memory() for k, v in out.items()}
        if self.dataset.gather:  # images in host memory: this batch's tiles, on their way to the GPU
            out["tiles"] = self.dataset.fetch(out["tiles"])
        out["im_file"] = [self.dataset.dataset.im_files[i] for i in idx]
        return out

    def render(self, p):
        """One batch in Ultralytics' format, on the GPU: the planned tensors copied over, the pixels drawn."""
        dev = self.dataset.device
        b = {k: p[k].to(dev, non_blocking=True) for k in ("batch_idx", "cls", "bboxes")}
        return {"img": self.dataset.render(p["tiles"], p["params"]), **b, "im_file": p["im_file"]}

# ---------------------------------------------------------------------------
# Weights and device
# ---------------------------------------------------------------------------


def resolve_weights(name):
    """(what YOLO() loads, how the summary describes it). Never downloads during a run:
    a missing .pt falls back to the matching .yaml, trained from scratch, with a loud warning."""
    if name.endswith(".yaml"):
        return name, f"{name} (from scratch)"
    from ultralytics.utils import SETTINGS
    for path in (Path(name), WEIGHTS_DIR / name, Path(SETTINGS["weights_dir"]) / name):
        if path.is_file():
            return str(path), f"{name} (pretrained)"
    scratch = Path(name).with_suffix(".yaml").name
    banner(f"{name} not found in weights/ (offline): training {scratch} from scratch. "
           f"To use pretrained weights, run `uv run prepare.py --weights {name}` once with internet "
           "access, or copy the file into weights/.")
    return scratch, f"{scratch} (from scratch: {name} not found)"


def download_weights(name):
    """One-time fetch of Ultralytics' released weights into weights/ (prep step, needs internet)."""
    os.environ.pop("YOLO_OFFLINE")
    from ultralytics.utils.downloads import attempt_download_asset
    WEIGHTS_DIR.mkdir(exist_ok=True)
    target = WEIGHTS_DIR / name
    try:
        attempt_download_asset(target)
    except Exception as e:
        raise HarnessError(f"could not download {name} ({type(e).__name__}); copy the file into {WEIGHTS_DIR}/ by hand")
    if not target.is_file():
        raise HarnessError(f"{name} is not among Ultralytics' released weights; copy it into {WEIGHTS_DIR}/")
    print(f"saved {target}")


def pick_device(request=None):
    """(device for Ultralytics, description) for train.py's DEVICE: None is CUDA device 0, else the CPU
    (start() warns loudly); an index is that GPU; a list of indices is one run over those GPUs (DDP).
    A request this machine cannot meet fails here, before any GPU time is spent."""
    import torch
    if request == "cpu":
        return "cpu", "cpu"
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if request is None:
        return (0, f"cuda:0 {torch.cuda.get_device_name(0)}") if gpus else ("cpu", "cpu")
    ids = [request] if isinstance(request, int) else request
    if (not isinstance(ids, (list, tuple)) or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)):
        raise HarnessError(f"DEVICE = {request!r} in train.py: use None (GPU 0), a GPU index (1) or a list of "
                           "GPU indices ([0, 1]: one run over several GPUs)")
    if len(set(ids)) != len(ids):
        raise HarnessError(f"DEVICE = {request!r} in train.py names a GPU twice; list each GPU once")
    missing = [i for i in ids if i >= gpus]
    if missing:
        have = f"{gpus} GPU{'s' if gpus != 1 else ''} ({', '.join(map(str, range(gpus)))})" if gpus else "no CUDA GPU"
        raise HarnessError(f"DEVICE = {request!r} in train.py: GPU {missing[0]} does not exist, this machine has "
                           f"{have}; set DEVICE = None or list GPUs that exist")
    names = [torch.cuda.get_device_name(i) for i in ids]
    name = names[0] if len(set(names)) == 1 else " + ".join(names)
    if len(ids) == 1:
        return ids[0], f"cuda:{ids[0]} {name}"
    return list(ids), f"cuda:{','.join(map(str, ids))} {len(ids)} x {name}"


def process_gpu_mb(index, pid=None):
    """What NVML says a process (this one by default) holds on GPU `index`, in MB, as nvidia-smi shows it;
    None where NVML cannot tell (no NVML, or another PID namespace)."""
    try:
        import pynvml
        import torch
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{torch.cuda.get_device_properties(index).uuid}")
        used = {p.pid: p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
        return (used.get(pid or os.getpid()) or 0) / 2**20
    except Exception:
        return None


def peak_vram_mb(device):
    """The most memory this process held on GPU `device` (an index), as nvidia-smi would show it for the
    process: PyTorch's peak reserved memory plus what the process holds outside PyTorch (CUDA context,
    libraries), read from NVML once at the end. 0.0 on CPU."""
    if device == "cpu":
        return 0.0
    import torch
    peak = torch.cuda.max_memory_reserved(device) / 2**20
    used = process_gpu_mb(device)
    if used:  # without NVML: PyTorch's own figure alone
        peak += max(used - torch.cuda.memory_reserved(device) / 2**20, 0)
    return peak

# ---------------------------------------------------------------------------
# The run: start() before training, finish() after it
# ---------------------------------------------------------------------------


@dataclass
class Run:
    """What train.py needs from the harness, and what the summary reports."""
    data: str                  # the dataset YAML training uses: source, resolved, in the run folder
    source: Path               # the dataset YAML as found
    kind: str                  # real, YOLO_DATA or synthetic
    splits: dict               # train and val image folders: the guard checks training used these
    device: object             # a GPU index, [0, 1, ...] (DDP) or "cpu", as Ultralytics takes it
    device_name: str
    weights: str               # what YOLO() loads
    weights_note: str          # how the summary describes it
    project: str = str(RUN_DIR.parent)
    name: str = RUN_DIR.name


_RUN = None


def start(model, device=None, gpu_data=True):
    """Check everything before any GPU time is spent; return the Run for train.py's call.
    device: train.py's DEVICE (see pick_device). gpu_data: train from images decoded once and augmented on
    the GPU (else Ultralytics' CPU workers)."""
    global _RUN
    request = device
    device, device_name = pick_device(request)  # first: a bad DEVICE fails before anything is written
    os.environ[GPU_DATA_ENV] = "1" if gpu_data else "0"  # an environment variable reaches DDP workers too
    yaml_path, kind = find_dataset()
    if kind == "synthetic":
        banner(f"no dataset in {DEFAULT_DATA.parent}/ and no YOLO_DATA: training on the SYNTHETIC "
               "stand-in (data: synthetic). Put Kaggle's ships-aerial-images there for real results.")
    stats = check_dataset(yaml_path)
    print(dataset_line(yaml_path, kind, stats))
    shutil.rmtree(RUN_DIR, ignore_errors=True)  # one run folder, reused: disk use stays flat
    RUN_DIR.mkdir(parents=True)
    data = write_run_yaml(stats)
    _configure_ultralytics()
    if device == "cpu" and request is None:
        banner("no CUDA GPU found: training on the CPU. It works, about 100x slower; "
               "metrics are not comparable with GPU runs.")
    weights, weights_note = resolve_weights(model)
    print(f"time budget: {TIME_BUDGET:g} s | device: {device_name} | weights: {weights_note}")
    splits = {s: str(stats[s][0]) for s in ("train", "val")}
    _RUN = Run(str(data), yaml_path, kind, splits, device, device_name, weights, weights_note)
    threading.Thread(target=_watchdog, daemon=True).start()
    return _RUN


def __getattr__(name):
    """prepare.Trainer is built on first use, so Ultralytics is imported only after the offline setup
    (and `prepare.py check` or the stand-in's worker processes never import it)."""
    if name == "Trainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _trainer_class():
    _configure_ultralytics()
    from ultralytics.models.yolo.detect import DetectionTrainer

    class Trainer(DetectionTrainer):
        """Ultralytics' detection trainer with the harness inside: the training clock stops where its
        final validation starts, every batch counts its images, and a NaN loss ends the run at once.
        Under DDP each worker process rebuilds this class by importing prepare, so all of it reaches them;
        each worker hands its clock, count and memory to the parent (write_handoff), which does the final
        validation itself (train_ddp)."""
        trained_images = 0         # images trained on (a DDP parent: every rank's)
        training_seconds = 0.0     # the trainer's clock when the final validation starts (a DDP parent: rank 0's)

        def train(self):
            return train_ddp(self) if self.ddp else super().train()

        def get_dataloader(self, dataset_path, batch_size=16, rank=0, mode="train"):
            if mode != "train" or os.environ.get(GPU_DATA_ENV) != "1":
                return super().get_dataloader(dataset_path, batch_size, rank, mode)
            check_gpu_data_args(self.args)
            if getattr(self, "gpu_data", None) is None:  # decoded once: an out-of-memory retry only re-batches
                from ultralytics.utils.torch_utils import torch_distributed_zero_first
                with torch_distributed_zero_first(rank):  # one process writes the label cache
                    dataset = self.build_dataset(dataset_path, "train", batch_size)
                self.gpu_data = GpuDataset(dataset, copy(self.args), self.device)
            return GpuLoader(self.gpu_data, batch_size, self.args.seed, rank, self.world_size)

        def preprocess_batch(self, batch):
            self.trained_images += len(batch["img"])  # the last batch of an epoch may be smaller
            return super().preprocess_batch(batch)

        def _get_warmup_iterations(self, num_batches):
            # Called right after Ultralytics re-estimates, from this process's own clock, how many epochs
            # fit the time budget. DDP ranks that disagree validate after different epochs and deadlock (and
            # follow different LR schedules): every rank takes rank 0's estimate, as it takes rank 0's stop.
            if self.world_size > 1 and _ddp_rank() >= 0:
                import torch.distributed as dist
                epochs = [self.epochs]
                dist.broadcast_object_list(epochs, 0)
                self.epochs = self.args.epochs = epochs[0]
            return super()._get_warmup_iterations(num_batches)

        def optimizer_step(self):
            super().optimizer_step()
            # Stop early, as karpathy's does. Checked after the step, next to the trainer's own per-batch sync:
            # before it, the wait for the backward pass left the GPU idle while the step's kernels were launched.
            if not bool(self.loss.isfinite()):
                raise HarnessError(f"loss is {float(self.loss)} in epoch {self.epoch + 1}: the training "
                                   "diverged; lower LR0, or try AMP = False")

        def last_validation_is_best(self):
            return self.fitness is not None and self.fitness == self.best_fitness

        def save_model(self):
            # Ultralytics writes last.pt and best.pt after every epoch, 0.2 s of the budget each time (3% of it
            # on an H200). Only two can matter here: a new best validation, and the end (nothing resumes a
            # 5-minute run).
            if self.stop or self.last_validation_is_best():
                return super().save_model()
            return False

        def final_eval(self):
            self.training_seconds = time.time() - self.train_time_start
            rank = _ddp_rank()
            if rank >= 0:  # a DDP worker: the parent validates best.pt itself (train_ddp); hand it the rest
                write_handoff(rank, worker_report(self, rank))
                return
            if self.last_validation_is_best() and FITNESS_KEY in self.metrics:
                # best.pt holds the very weights the last validation just measured (always so with
                # val=False): Ultralytics would validate them again, 20 s for the same number.
                print(f"final validation: best.pt is epoch {self.epoch + 1}, validated above")
                return
            return super().final_eval()

    Trainer.__module__, Trainer.__qualname__ = __name__, "Trainer"  # pickled by reference under DDP
    return Trainer


def _watchdog():
    """Stop a run that overran its budget (a hung dataloader, a stuck validation) from the inside."""
    time.sleep(OVERRUN_LIMIT)
    print(f"error: the run overran: still going {OVERRUN_LIMIT:.0f} s after its checks (time budget "
          f"{TIME_BUDGET:g} s); stopped by the harness. Look at the end of the log for what hung", flush=True)
    for child in multiprocessing.active_children():  # dataloader workers
        child.kill()
    for group in _DDP_GROUPS:  # DDP workers, with their own dataloader workers
        _stop_group(group, grace=0)
    os._exit(3)


def guard(trainer, run):
    """The honest-metric guard: the metric must be the final validation on the fixed val split,
    with Ultralytics' default evaluation settings, after a run on the fixed time budget."""
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.data.utils import get_split_fraction
    args = trainer.args
    changed = []
    if str(Path(str(args.data)).resolve()) != str(Path(run.data).resolve()):
        changed.append(f"data={args.data} (must be run.data)")
    elif any(trainer.data.get(split) != folder for split, folder in run.splits.items()):
        changed.append(f"the dataset YAML {run.data} (its splits were rewritten)")
    if not args.time or abs(args.time * 3600 - TIME_BUDGET) > 1e-6:
        changed.append(f"time={args.time} (must be TIME_BUDGET / 3600 = {TIME_BUDGET / 3600:g})")
    changed += [f"{k}={getattr(args, k)!r} (default {DEFAULT_CFG_DICT[k]!r})"
                for k in EVAL_ARGS if getattr(args, k) != DEFAULT_CFG_DICT[k]]
    if get_split_fraction(args.fraction, "val") != 1.0:
        changed.append(f"fraction={args.fraction!r} (validation must use the whole val split)")
    if changed:
        raise HarnessError("train.py changed what gets evaluated: " + "; ".join(changed) + "; put it back")
    if not trainer.metrics or FITNESS_KEY not in trainer.metrics:
        raise HarnessError("nothing was validated: the run ended without a final validation, "
                           "so there is no metric to report")


def finish(model):
    """Guard the metric, then print the summary: the last thing the run prints."""
    run, trainer = _RUN, getattr(model, "trainer", None)
    if run is None or trainer is None:
        raise HarnessError("train.py must call prepare.start() and then model.train() before prepare.finish()")
    if not isinstance(trainer, _trainer_class()):
        raise HarnessError("train.py must pass trainer=prepare.Trainer to model.train(): it carries the "
                           "harness's clock and checks; put it back")
    guard(trainer, run)
    if trainer.ddp:  # the workers trained and validated with their own copy of the settings: guard those too
        guard(worker_view(trainer.ddp_reports[0]), run)
    m = trainer.metrics
    fitness = float(m[FITNESS_KEY])
    if not math.isfinite(fitness):
        raise HarnessError(f"{FITNESS_KEY} is {fitness}: the training diverged; lower LR0, or try AMP = False")
    training_seconds = trainer.training_seconds
    summary = {
        "fitness_key": FITNESS_KEY,
        "fitness": f"{fitness:.6f}",
        "training_seconds": f"{training_seconds:.1f}",
        "total_seconds": f"{time.time() - T0:.1f}",
        "peak_vram_mb": f"{run_peak_vram_mb(run, trainer):.1f}",
        "precision": f"{float(m['metrics/precision(B)']):.6f}",
        "recall": f"{float(m['metrics/recall(B)']):.6f}",
        "map50": f"{float(m['metrics/mAP50(B)']):.6f}",
        "map50_95": f"{fitness:.6f}",
        "epoch": trainer.epoch + 1,
        "time_budget_s": f"{TIME_BUDGET:g}",
        "train_images_per_s": f"{trainer.trained_images / max(training_seconds, 1e-9):.1f}",
        "data": run.kind,
        "dataset": str(run.source),
        "weights": run.weights_note,
        "device": run.device_name,
        "run_dir": str(RUN_DIR),
    }
    print("---")
    for k, v in summary.items():
        print(f"{k}: {v}")
    return summary

# ---------------------------------------------------------------------------
# Several GPUs: Ultralytics' DDP workers, what they hand back, and the parent's final validation
# ---------------------------------------------------------------------------
# With DEVICE = [0, 1] the process that runs train.py (the parent) starts one worker process per GPU through
# torch.distributed.run. Ultralytics pickles prepare.Trainer by reference, so each worker imports prepare
# (offline settings, Ultralytics patches, the GPU data pipeline, NaN stop, excepthook) and trains on its
# share of every batch. The parent gets nothing back from Ultralytics but the checkpoints, so where a one-GPU
# run's final validation would start, each worker writes a small report (write_handoff) and exits; the
# parent then validates best.pt itself, as a one-GPU run's final validation does (validate_best).

GUARDED_ARGS = ("data", "time", "fraction") + EVAL_ARGS  # what guard() reads from a trainer's args
_DDP_GROUPS = []  # DDP worker process groups still running: stopped whole on an interrupt or an overrun


def _ddp_rank():
    """This process's rank among the DDP workers (set by torch.distributed.run, read the same way by
    Ultralytics), -1 outside DDP."""
    return int(os.environ.get("RANK", -1))


def write_handoff(rank, report):
    """A DDP worker's report to its parent: one JSON file per rank in the run folder."""
    write_atomic(RUN_DIR / DDP_HANDOFF.format(rank=rank), json.dumps({"rank": rank, **report}, default=str).encode())


def read_handoffs(world_size):
    """The reports of ranks 0 .. world_size - 1, in rank order; a worker killed outright leaves none."""
    paths = [RUN_DIR / DDP_HANDOFF.format(rank=rank) for rank in range(world_size)]
    return [json.loads(path.read_text()) for path in paths if path.is_file()]


def worker_report(trainer, rank):
    """What a DDP worker hands back when its clock stops: clock, images, epoch and peak memory for the
    summary; rank 0 also the settings it trained and validated with and its last validation's metrics,
    for the guard and the log."""
    gpu = trainer.device.index if trainer.device.type == "cuda" else "cpu"
    report = {"training_seconds": trainer.training_seconds, "trained_images": trainer.trained_images,
              "epoch": trainer.epoch, "gpu": gpu, "peak_vram_mb": peak_vram_mb(gpu)}
    if rank == 0:
        report["args"] = {k: getattr(trainer.args, k) for k in GUARDED_ARGS}
        report["splits"] = {split: trainer.data.get(split) for split in ("train", "val")}
        report["metrics"] = {k: float(v) for k, v in (trainer.metrics or {}).items()}
    return report


def worker_view(report):
    """Rank 0's trainer as guard() sees it: the settings it trained and validated with, and its metrics."""
    from types import SimpleNamespace
    return SimpleNamespace(args=SimpleNamespace(**report["args"]), data=report["splits"], metrics=report["metrics"])


def ddp_failure(reports, code, world_size):
    """The one line that ends the log when the DDP workers failed: a worker's own error, preferring the one
    that started it over the `interrupted` of the workers torch.distributed.run stopped after it."""
    errors = [r for r in reports if r.get("error")]
    first = [r for r in errors if not r["error"].startswith("interrupted")] or errors
    if first:
        return f"{first[0]['error']} (DDP rank {first[0]['rank']} of {world_size})"
    return (f"the DDP workers failed (exit code {code}) without an error line of their own; "
            "the log above (torch.distributed.run's report) says why")


def train_ddp(trainer):
    """Ultralytics' DDP launch (BaseTrainer.train and utils/dist.py), kept in hand: the run folder stays (it
    holds run/data.yaml; Ultralytics would delete it), the workers run as one process group that an interrupt
    or the watchdog stops whole, a worker's failure ends the log with its own `error:` line, and the final
    validation is done here, on the first GPU, as in a one-GPU run."""
    from ultralytics.utils.dist import ddp_cleanup, find_free_network_port, generate_ddp_file
    from ultralytics.utils.torch_utils import unset_deterministic
    try:
        import cloudpickle  # noqa: F401  (Ultralytics sends the trainer to the workers with it)
    except ImportError:
        raise HarnessError("DEVICE with several GPUs needs the cloudpickle package: run `uv sync` "
                           "(or pip install 'cloudpickle>=3.1.1')") from None
    n, batch = trainer.world_size, trainer.args.batch
    if batch < 1 or batch % n:
        raise HarnessError(f"BATCH = {batch} with {n} GPUs: under DDP the batch is split over the GPUs; "
                           f"set BATCH in train.py to a multiple of {n}")
    if trainer.args.rect:  # as Ultralytics does
        warn("rect=True does not work over several GPUs: training with rect=False")
        trainer.args.rect = False
    gpus = [int(i) for i in trainer.args.device.split(",")] if trainer.device.type == "cuda" else []
    held = {i: process_gpu_mb(i) or 0.0 for i in gpus}  # what this process holds on each GPU while the workers run
    file = generate_ddp_file(trainer)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
           "--master_port", str(find_free_network_port()), file]
    print(f"DDP: {n} worker processes on device {trainer.args.device}: {' '.join(cmd)}")
    try:
        code = run_group(cmd)
    finally:
        ddp_cleanup(trainer, file)
        unset_deterministic()
    reports = read_handoffs(n)
    if code != 0 or len(reports) != n or any(r.get("error") for r in reports):
        raise HarnessError(ddp_failure(reports, code, n))
    first = reports[0]
    trainer.ddp_reports, trainer.ddp_held_mb = reports, held
    trainer.training_seconds = first["training_seconds"]  # rank 0's clock decides when every rank stops
    trainer.trained_images = sum(r["trained_images"] for r in reports)
    trainer.epoch = first["epoch"]
    print(f"DDP: the workers' last validation (each GPU a share of the val split): {FITNESS_KEY} "
          f"{first['metrics'].get(FITNESS_KEY, float('nan')):.6f}; the summary reports best.pt validated "
          "here on one GPU, as a one-GPU run does it")
    validate_best(trainer)


def validate_best(trainer):
    """A one-GPU run's final validation, done in this process: the trainer's own val loader (rectangular
    batches of 2 x BATCH, one device) and validator, FP16 on a GPU when AMP is on (as the per-epoch
    validations leave it), then Ultralytics' own final_eval, which strips the checkpoints and validates
    best.pt. trainer.metrics stays None without a best.pt (the guard says so)."""
    if not trainer.best.exists():
        return
    if not hasattr(trainer.model, "stride"):  # built from a YAML in the DDP workers: this process has its name only
        from ultralytics.nn.tasks import load_checkpoint
        trainer.model = load_checkpoint(trainer.best)[0]  # the val loader pads images to its stride
    trainer.test_loader = trainer.get_dataloader(trainer.data[trainer.args.split], batch_size=trainer.args.batch * 2,
                                                 rank=-1, mode="val")
    trainer.validator = trainer.get_validator()
    amp = trainer.device.type != "cpu" and trainer.args.amp not in (False, "fp32")
    trainer.validator.args.quantize = 16 if amp else None
    super(_trainer_class(), trainer).final_eval()  # Ultralytics' own, without prepare.Trainer's clock and skip


def run_group(cmd):
    """Run a command in a process group of its own and wait for it. Whatever ends the wait early (SIGTERM,
    Ctrl-C, an error) stops the whole group, so no DDP worker keeps a GPU after the run. Returns the exit code."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    _DDP_GROUPS.append(proc)
    try:
        return proc.wait()
    finally:
        _stop_group(proc)
        _DDP_GROUPS.remove(proc)


def _stop_group(proc, grace=DDP_STOP_GRACE):
    """SIGTERM to the group (workers end through their `error: interrupted` path), then SIGKILL to whatever
    is left of it after `grace` seconds. Nothing to do when the group has already exited."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def ddp_peak_vram_mb(reports, held_mb, parent_gpu, parent_peak_mb):
    """Peak memory per GPU of a DDP run, as nvidia-smi would show it for the run's processes on that card:
    each worker's peak plus what the parent held there while the workers ran; on the parent's GPU the
    parent's own final validation (after the workers exited) when that is more."""
    per_gpu = {r["gpu"]: r["peak_vram_mb"] + held_mb.get(r["gpu"], 0.0) for r in reports}
    per_gpu[parent_gpu] = max(per_gpu.get(parent_gpu, 0.0), parent_peak_mb)
    return per_gpu


def run_peak_vram_mb(run, trainer):
    """The summary's peak_vram_mb: the process's peak on its GPU; under DDP the largest per GPU (what decides
    whether a setting fits the cards), with every GPU's figure in the log."""
    if not trainer.ddp or run.device == "cpu":
        return peak_vram_mb(run.device)
    gpu = trainer.device.index
    per_gpu = ddp_peak_vram_mb(trainer.ddp_reports, trainer.ddp_held_mb, gpu, peak_vram_mb(gpu))
    print("DDP: peak GPU memory (MB) per GPU: " + ", ".join(f"{g}: {mb:.1f}" for g, mb in sorted(per_gpu.items()))
          + "; peak_vram_mb is the largest")
    return max(per_gpu.values())

# ---------------------------------------------------------------------------
# Progress: results.tsv -> progress.png and a text summary
# ---------------------------------------------------------------------------

@dataclass
class Row:
    n: int               # experiment number, 1-based in file order
    commit: str
    metric: float        # mAP50-95, 0.0 for crashes
    memory_gb: float
    status: str          # keep | discard | crash
    description: str


def split_line(line):
    """Split one line into 5 fields; returns (fields, was_tab_separated)."""
    if "\t" in line:
        fields = [f.strip() for f in line.split("\t")]
        # a description may itself contain tabs: glue columns 5+ back together
        if len(fields) > len(RESULTS_COLUMNS):
            fields = fields[:4] + [" ".join(f for f in fields[4:] if f)]
        return fields, True
    # agents sometimes write spaces or commas; the first 4 fields never contain
    # either, so splitting at most 4 times keeps the description intact
    return re.split(r"[,\s]+", line.strip(), maxsplit=4), False


def parse_number(text, column):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # "nan"/"inf" parse as floats but would poison best/gain
        raise ValueError(f"non-numeric {column} {text!r}")
    return value


def parse_fields(fields):
    """Turn 5 string fields into (commit, metric, memory, status, desc) or raise ValueError."""
    if len(fields) < len(RESULTS_COLUMNS):
        raise ValueError(f"expected {len(RESULTS_COLUMNS)} columns, got {len(fields)}")
    commit, metric, memory, status, description = fields
    status = status.lower()
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r} (expected keep, discard or crash)")
    return (commit, parse_number(metric, "metric"), parse_number(memory, "memory_gb"),
            status, description.strip())


def read_results(path):
    """Parse results.tsv leniently: skip bad lines with a warning instead of failing."""
    path, rows, warnings, saw_non_tab = Path(path), [], [], False
    text = path.read_text(encoding="utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), start=1):  # splitlines handles CRLF
        if not line.strip():
            continue
        fields, is_tab = split_line(line)
        if fields[0].lower() == RESULTS_COLUMNS[0]:  # header row (optional: may be missing)
            continue
        try:
            parsed = parse_fields(fields)
        except ValueError as e:
            warnings.append(f"{path}:{lineno}: skipped line, {e}")
            continue
        saw_non_tab = saw_non_tab or not is_tab
        rows.append(Row(len(rows) + 1, *parsed))
    if saw_non_tab:
        # warn once per file, not once per line: the fix is the same either way
        warnings.insert(0, f"{path}: not tab-separated; split columns on spaces/commas instead")
    return rows, warnings


def baseline_and_best(rows):
    """Baseline = first successful run; best = highest kept run (or any successful run)."""
    ran = [r for r in rows if r.status != "crash"]
    if not ran:
        return None, None
    kept = [r for r in ran if r.status == "keep"]
    best = max(kept or ran, key=lambda r: r.metric)
    return ran[0], best


def summarize_results(rows):
    """A few plain-text lines an agent can read to decide what to try next."""
    if not rows:
        return "no experiments yet"
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    lines = [f"runs: {len(rows)} total, {counts['keep']} keep, "
             f"{counts['discard']} discard, {counts['crash']} crash"]
    baseline, best = baseline_and_best(rows)
    if baseline is None:
        lines.append("no successful runs yet: every run crashed (check run.log)")
        return "\n".join(lines)
    lines.append(f"baseline: {baseline.metric:.6f}  {baseline.commit}  {baseline.description}")
    lines.append(f"best:     {best.metric:.6f}  {best.commit}  {best.description}")
    gain = best.metric - baseline.metric
    relative = f" ({gain / baseline.metric * 100:+.1f}%)" if baseline.metric > 0 else ""
    lines.append(f"gain:     {gain:+.6f}{relative} over baseline")
    kept = [r for r in rows if r.status == "keep"][-LAST_KEPT_SHOWN:]
    if kept:
        lines.append(f"last {len(kept)} kept:")
        lines += [f"  #{r.n:<3} {r.commit}  {r.metric:.6f}  {r.description}" for r in kept]
    return "\n".join(lines)


def running_best_steps(rows):
    """x, y of the running best over kept runs, held flat up to the last experiment."""
    xs, ys, best = [], [], -math.inf
    for r in rows:
        if r.status == "keep" and r.metric > best:
            best = r.metric
            xs.append(r.n)
            ys.append(best)
    if xs and rows[-1].n > xs[-1]:  # extend the last step to the latest experiment
        xs.append(rows[-1].n)
        ys.append(best)
    return xs, ys


def spaced_for_labels(kept, span):
    """Kept runs to annotate: at least span/LABEL_SLOTS apart, newest first, so long
    runs stay readable and the most recent changes always get a label."""
    gap, chosen = max(1, span / LABEL_SLOTS), []
    for r in reversed(kept):
        if not chosen or chosen[-1].n - r.n >= gap:
            chosen.append(r)
    return chosen


def shorten(text, limit=LABEL_MAX_CHARS):
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plot_progress(rows, out_path):
    """Write a progress.png in the spirit of karpathy/autoresearch."""
    # imported here so the rest of prepare.py never pays for matplotlib; the Agg
    # canvas renders off-screen without touching pyplot's global backend
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set(xlabel="experiment #", ylabel="mAP50-95 (higher is better)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if not rows:
        ax.set(title="autoresearch progress", xticks=[], yticks=[])
        ax.text(0.5, 0.5, "no experiments yet", ha="center", va="center",
                fontsize=16, color="grey", transform=ax.transAxes)
        fig.savefig(out_path)
        return

    kept = [r for r in rows if r.status == "keep"]
    discarded = [r for r in rows if r.status == "discard"]
    crashed = [r for r in rows if r.status == "crash"]
    baseline, best = baseline_and_best(rows)

    if discarded:
        ax.scatter([r.n for r in discarded], [r.metric for r in discarded],
                   s=18, color="grey", alpha=0.45, label="discard", zorder=2)
    if kept:
        xs, ys = running_best_steps(rows)
        ax.step(xs, ys, where="post", color="tab:green", lw=2, label="best so far", zorder=3)
        ax.scatter([r.n for r in kept], [r.metric for r in kept], s=36,
                   color="tab:green", edgecolor="black", lw=0.5, label="keep", zorder=4)
        for r in spaced_for_labels(kept, rows[-1].n):
            # steep labels stay parallel and apart even when the staircase rises
            # steadily; a shallow angle would run each label into the next one
            ax.annotate(shorten(r.description), (r.n, r.metric), xytext=(2, 5),
                        textcoords="offset points", fontsize=7, rotation=LABEL_ANGLE,
                        rotation_mode="anchor", color="darkgreen", ha="left", va="center")
    if baseline is not None:
        ax.axhline(baseline.metric, color="tab:blue", ls="--", lw=1, alpha=0.7,
                   label=f"baseline {baseline.metric:.4f}")
        metrics = [r.metric for r in rows if r.status != "crash"]
        low, high = min(metrics), max(metrics)
        pad = max(high - low, 0.01)
        # headroom on top so the rotated labels of the best runs stay inside
        ax.set_ylim(low - 0.1 * pad, high + 0.6 * pad)
    else:
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "every run crashed", ha="center", va="center",
                fontsize=16, color="tab:red", transform=ax.transAxes)
    if crashed:
        # crashes have no metric: pin them to the bottom edge (x in data, y in axes coords)
        ax.scatter([r.n for r in crashed], [0] * len(crashed), marker="x", s=50,
                   color="tab:red", lw=2, label="crash", zorder=5, clip_on=False,
                   transform=ax.get_xaxis_transform())
    ax.set_xlim(0.5, rows[-1].n + 1.5)

    runs = f"{len(rows)} run" + ("s" if len(rows) != 1 else "")
    counts = f"{runs}: {len(kept)} keep, {len(discarded)} discard, {len(crashed)} crash"
    best_text = f", best {best.metric:.4f} ({best.commit})" if best else ""
    ax.set_title(f"autoresearch progress: {counts}{best_text}")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    fig.savefig(out_path)


def progress(path="results.tsv", out_path="progress.png"):
    """CLI entry: print warnings and a summary, write the plot. Returns an exit code."""
    if not Path(path).is_file():
        print(f"error: {path} not found — run an experiment first (see program.md)",
              file=sys.stderr)
        return 1
    rows, warnings = read_results(path)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(summarize_results(rows))
    plot_progress(rows, out_path)
    print(f"wrote {out_path}")
    return 0

# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description="Dataset prep and checks for autoresearch on ships.")
    parser.add_argument("command", nargs="?", default="check", choices=["check", "progress"])
    parser.add_argument("--synthetic", choices=sorted(SYNTH_SCALES), help="generate the stand-in at this scale")
    parser.add_argument("--weights", metavar="NAME.pt", help="download Ultralytics weights into weights/")
    parser.add_argument("--results", default="results.tsv", help="progress: the results file to read")
    args = parser.parse_args(argv)
    if args.command == "progress":
        return progress(args.results, "progress.png")
    if args.weights:
        download_weights(args.weights)
        return 0
    if args.synthetic:
        yaml_path, kind = make_synthetic(args.synthetic), "synthetic"
    else:
        yaml_path, kind = find_dataset()
    print(dataset_line(yaml_path, kind, check_dataset(yaml_path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
