"""The dataset: find it (YOLO_DATA, ships-aerial-images/, else the stand-in), resolve its splits, and check
every label and image header before training. The check of an unchanged dataset is cached by fingerprint."""

import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import yaml

from harness import common
from harness.common import HarnessError, warn, write_atomic
from harness.synthetic import synthetic_dir

SPLITS = ("train", "val", "test")  # the data YAML's keys, in order
CHECKS_VERSION = b"2"  # part of the fingerprint: a dataset is checked again when the checks change
MAX_BAD_SHARE = 0.01  # above this share of broken files in a split the run refuses to start
IMG_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}

def find_dataset():
    """(data.yaml, kind): YOLO_DATA, else ships-aerial-images/, else the stand-in (announced in a banner)."""
    if env := os.environ.get("YOLO_DATA"):
        path = Path(env).expanduser().resolve()
        if not path.is_file():
            raise HarnessError(f"YOLO_DATA={env}: no such file; point it at a dataset YAML or unset it")
        return path, "YOLO_DATA"
    if common.DEFAULT_DATA.is_file():
        return common.DEFAULT_DATA, "real"
    folder = common.DEFAULT_DATA.parent
    if (folder / "train" / "images").is_dir():
        raise HarnessError(f"{folder}: has train/images but no data.yaml; copy the data.yaml from "
                           "Kaggle's zip there (see ships-aerial-images/README.md)")
    common.banner(f"no dataset in {folder}/ and no YOLO_DATA: training on the SYNTHETIC stand-in (data: "
                  "synthetic). Put Kaggle's ships-aerial-images there for real results.")
    return synthetic_dataset(), "synthetic"


def synthetic_dataset():
    """The stand-in's data.yaml: the largest one already generated, else a new one (full on a GPU)."""
    existing = [s for s in ("full", "small") if (synthetic_dir(s) / "data.yaml").is_file()]
    scale = existing[0] if existing else ("full" if _cuda_available() else "small")
    if not existing:
        # In a child process: the generator's worker pool re-imports the main script, which must be
        # guarded by __main__, never train.py.
        cmd = [sys.executable, "-m", "harness.synthetic", scale]
        if subprocess.run(cmd, cwd=common.REPO_DIR).returncode != 0:
            raise HarnessError(f"generating the synthetic stand-in failed (see above); "
                               f"try `uv run prepare.py --synthetic {scale}`")
    return synthetic_dir(scale) / "data.yaml"


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
        raise HarnessError(f"{yaml_path}: no '{key}:' entry; add '{key}: {key}/images' "
                           "(the split's image folder)")
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
    """Image paths of a split, and the label path of each (label_path)."""
    images = sorted(Path(d) / f for d, _, fs in os.walk(img_dir) for f in fs
                    if Path(f).suffix.lower() in IMG_SUFFIXES)
    return images, [label_path(im) for im in images]


def label_path(image):
    """Where Ultralytics looks for an image's labels: the last /images/ of its path becomes /labels/, the
    suffix .txt. None where the path has no /images/."""
    head, sep, tail = str(image).rpartition(f"{os.sep}images{os.sep}")
    return Path(head + f"{os.sep}labels{os.sep}" + tail).with_suffix(".txt") if sep else None


@contextlib.contextmanager
def unwatched(path):
    """A name to read `path` by that no run's watch on its folder counts (harness/watch.py): a hard link in
    the cache, removed after; the path itself where no link can be made (another filesystem, no such file)."""
    link = common.CACHE_DIR / "unwatched" / f"{os.getpid()}-{threading.get_ident()}"
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        os.link(path, link)
    except OSError:
        yield Path(path)
        return
    try:
        yield link
    finally:
        link.unlink(missing_ok=True)


def check_label_file(path, nc, source=None):
    """(number of boxes, problem or None) for one YOLO label file, read from `source` (default: path)."""
    try:
        lines = Path(source or path).read_text().splitlines()
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
        if not all(math.isfinite(v) for v in (cls, cx, cy, w, h)):
            return boxes, f"{where}: '{line.strip()}' has a value that is not a finite number"
        if cls != int(cls) or not 0 <= cls < nc:
            return boxes, f"{where}: class {fields[0]} out of range 0..{nc - 1}"
        if not all(0 <= v <= 1 for v in (cx, cy, w, h)):
            return boxes, f"{where}: coordinates must be normalized to [0, 1]"
        if w <= 0 or h <= 0:
            return boxes, f"{where}: box width and height must be positive"
        boxes += 1
    return boxes, None


def check_image_file(path, source=None):
    """A problem string if the image cannot be used, else None. A JPEG's header and end marker are read; any
    other format is checked in full (a PNG's chunks, anything else decoded), so a truncated file shows. Read
    from `source` (default: path); problems name path."""
    from PIL import Image, UnidentifiedImageError
    source = Path(source or path)
    if source.stat().st_size == 0:
        return f"{path}: empty file (0 bytes)"
    kind = path.suffix.lstrip(".").upper()
    try:
        with Image.open(source) as im:
            w, h, kind = *im.size, im.format
            if kind == "PNG":
                im.verify()
            elif kind != "JPEG":
                im.load()
    except Exception as e:  # PIL raises many types for damaged files
        # Ultralytics' patched Image.open tries pi_heif after PIL gives up, and raises that import's
        # error instead
        if UnidentifiedImageError in (type(e), type(e.__context__)):
            return f"{path}: not an image (no image format recognizes its bytes)"
        return f"{path}: damaged {kind} image, it does not decode ({type(e).__name__})"
    if w < 10 or h < 10:
        return f"{path}: image {w}x{h} is smaller than 10 px"
    if kind == "JPEG":
        with open(source, "rb") as f:
            f.seek(-2, os.SEEK_END)
            if f.read() != b"\xff\xd9":
                return f"{path}: truncated JPEG (no end marker)"
    return None


def label_folder(img_dir):
    """The labels folder that goes with a split's images folder, by label_path's rule (itself without one)."""
    labels = label_path(Path(img_dir) / "_")
    return labels.parent if labels else Path(img_dir)


def _fingerprint(yaml_path, split_dirs):
    """Cheap identity of a dataset: names, sizes and mtimes of every file, plus the YAML."""
    h = hashlib.sha1(CHECKS_VERSION + yaml_path.read_bytes())
    for d in split_dirs:
        for top in (d, label_folder(d)):
            for dirpath, _, files in sorted(os.walk(top)):
                for f in sorted(files):
                    st = os.stat(os.path.join(dirpath, f))
                    h.update(f"{dirpath}/{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class Split(NamedTuple):
    """One split of a checked dataset."""
    folder: Path  # its images folder
    images: int
    boxes: int


def stats_from_json(stats):
    """check_dataset's result again after a round trip through JSON (the supervisor hands it to the child)."""
    return {k: Split(Path(v[0]), v[1], v[2]) if k in SPLITS else v
            for k, v in stats.items()}


def check_dataset(yaml_path):
    """Check a dataset before training. Returns {"train"/"val"/"test": Split, "nc": n, "names": [...]};
    raises HarnessError naming the file (and line) and the fix on anything broken.
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
    memo = common.CACHE_DIR / "checks" / (key + ".json")
    if memo.is_file():
        cached = json.loads(memo.read_text())
        for w in cached.pop("warnings"):
            warn(w)
        return {**stats, **stats_from_json(cached)}
    warnings = []
    for split, folder in splits.items():
        images, labels = split_files(folder)
        if not images:
            raise HarnessError(f"{folder}: no images in the {split} split; put the split's images there")
        if labels[0] is None or not labels[0].parent.is_dir():
            raise HarnessError(f"{folder}: no labels folder for the {split} split; "
                               f"expected {label_folder(folder)}")
        boxes, problems = 0, []
        for im, lb in zip(images, labels):
            with unwatched(lb) as source:  # another run's watch on the val and test folders sees nothing
                n, problem = check_label_file(lb, nc, source)
            boxes += n
            if not problem:
                with unwatched(im) as source:
                    problem = check_image_file(im, source)
            if problem:
                problems.append(problem)
        if len(problems) > MAX_BAD_SHARE * len(images):
            raise HarnessError(f"{problems[0]} ({len(problems)} of {len(images)} {split} files broken); "
                               "fix or delete the broken files")
        if problems:
            warnings.append(f"{len(problems)} broken file(s) in {split}, under {MAX_BAD_SHARE:.0%}: training "
                            f"goes on (Ultralytics skips what it cannot read); first: {problems[0]}")
            warn(warnings[-1])
        if split == "train" and not boxes:
            raise HarnessError(f"{folder}: the train split's {len(images)} images have no boxes "
                               "(its label files are empty or missing); "
                               f"put the labels in {label_folder(folder)}")
        stats[split] = Split(folder, len(images), boxes)
    checked = {"warnings": warnings, **{k: stats[k] for k in splits}}
    write_atomic(memo, json.dumps(checked, default=str).encode())
    return stats


def dataset_line(yaml_path, kind, stats):
    splits = " | ".join(f"{s} {stats[s].images} images {stats[s].boxes} boxes"
                        for s in SPLITS if s in stats)
    return f"dataset: {kind} {yaml_path} | {splits}"


def write_run_yaml(stats, path=None):
    """The YAML training uses (by default run/data.yaml): absolute split folders, so paths from other machines
    just work. Returns its path."""
    data = {"path": str(stats["train"].folder.parent.parent), "nc": stats["nc"], "names": stats["names"]}
    data.update({s: str(stats[s].folder) for s in SPLITS if s in stats})
    path = path or common.RUN_DIR / "data.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def content_fingerprint(yaml_path, split_dirs):
    """{file: sha1 of its bytes} for the YAML and every image and label file of the splits. A file whose size
    and mtime are those of the last call keeps its cached digest, so an unchanged dataset costs one walk of
    stats. Also returns the state of the last call ({} on the first), for what changed since."""
    memo = common.CACHE_DIR / "content" / (hashlib.sha1(str(yaml_path.resolve()).encode()).hexdigest()
                                           + ".json")
    last = json.loads(memo.read_text()) if memo.is_file() else {}
    now = {}
    files = [str(yaml_path)] + [os.path.join(dirpath, f) for d in split_dirs for top in (d, label_folder(d))
                                for dirpath, _, fs in sorted(os.walk(top)) for f in sorted(fs)]
    for path in files:
        st = os.stat(path)
        old = last.get(path)
        if old and old[:2] == [st.st_size, st.st_mtime_ns]:
            now[path] = old
        else:
            with unwatched(path) as source, open(source, "rb") as f:  # unseen by another run's watch
                now[path] = [st.st_size, st.st_mtime_ns, hashlib.sha1(f.read()).hexdigest()]
    write_atomic(memo, json.dumps(now).encode())
    return {k: v[2] for k, v in now.items()}, {k: v[2] for k, v in last.items()}


def describe_changes(before, after, shown=3):
    """What differs between two content fingerprints, in a few words naming the first files; '' if nothing."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    parts = [f"{len(files)} {what} ({', '.join(files[:shown])}{', ...' if len(files) > shown else ''})"
             for what, files in (("added", added), ("removed", removed), ("changed", changed)) if files]
    return "; ".join(parts)


def fingerprint(yaml_path, stats):
    """The content fingerprint of the dataset (its YAML and every split's files), timed in the log, with a
    warning when it changed since the previous run. Returns it, for check_unchanged()."""
    t = time.time()
    now, last_run = content_fingerprint(yaml_path, [stats[s].folder for s in SPLITS if s in stats])
    print(f"dataset fingerprint: {len(now)} files in {time.time() - t:.1f} s")
    if last_run and (changes := describe_changes(last_run, now)):
        warn(f"the dataset changed since the previous run: {changes}")
    return now


def check_unchanged(yaml_path, stats, before):
    """Raise HarnessError when the dataset's content differs from the fingerprint `before`."""
    after = content_fingerprint(yaml_path, [stats[s].folder for s in SPLITS if s in stats])[0]
    if changes := describe_changes(before, after):
        raise HarnessError(f"the dataset changed during the run: {changes}; train.py must not write there "
                           "(program.md); restore the dataset")


def link_view(folder, dest):
    """A view of a split at dest/images and dest/labels made of hard links: the same files under other names,
    so that opens through the view are told apart from opens of the dataset's own folders (harness/watch.py).
    Returns dest/images, or None where hard links cannot be made (dest on another filesystem)."""
    images, labels = split_files(folder)
    source_labels = label_folder(folder)
    try:
        for src, top, sub in [(im, folder, "images") for im in images] + [
                (lb, source_labels, "labels") for lb in labels if lb and lb.is_file()]:
            target = dest / sub / Path(src).relative_to(top)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, target)
    except OSError:
        shutil.rmtree(dest, ignore_errors=True)
        return None
    return dest / "images"


def views(stats, dest):
    """The splits as the child sees them: val through a view of hard links in dest (link_view; the dataset's
    own folder where links cannot be made). Returns (stats for the child, the view or None)."""
    view = link_view(stats["val"].folder, dest / "val")
    return ({**stats, "val": stats["val"]._replace(folder=view)} if view else stats), view
