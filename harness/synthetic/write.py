"""The stand-in on disk: scenes rendered in a pool of processes, written as JPEGs with their YOLO labels
in Kaggle's layout (train/valid/test, one class 'ship'), moved into place whole; the stand-in in the cache."""

import hashlib
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from harness import common
from harness.synthetic.scene import render_scene

# ---------- the stand-in in the cache
SYNTH_SEED = 0  # the stand-in dataset is a pure function of this seed
SYNTH_SCALES = {"small": {"train": 300, "valid": 80, "test": 80},
                "full": {"train": 9697, "valid": 2165, "test": 1573}}

# ---------- the files
SYNTH_SPLITS = ("train", "valid", "test")
JPEG_QUALITY_MIN, JPEG_QUALITY_MAX = 60, 95
CHUNK_SIZE = 16                     # images per pool task
# relative paths and no 'path:' key, exactly like the Roboflow export, so the folder can be moved
SYNTH_DATA_YAML = "train: train/images\nval: valid/images\ntest: test/images\nnc: 1\nnames: ['ship']\n"


def synth_image_name(seed, split, index):
    """The file name of an image, in the Roboflow export's pattern."""
    digest = hashlib.md5(f"{seed}/{split}/{index}".encode()).hexdigest()
    return f"synth_{index:05d}_jpg.rf.{digest}.jpg"


def label_rows(boxes, h, w):
    """YOLO label rows (class 0, normalised centre and size) for pixel boxes."""
    return "".join(f"0 {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} "
                   f"{(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}\n"
                   for x0, y0, x1, y1 in boxes)


def write_chunk(root, seed, split, indices):
    """Render and write these images of a split, each from its own RNG; returns how many."""
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


def synthetic_dir(scale):
    """The cache folder of the stand-in at this scale ('small' or 'full')."""
    return common.CACHE_DIR / f"synthetic-{scale}-seed{SYNTH_SEED}"


def make_synthetic(scale):
    """Generate the stand-in at this scale unless it exists (the main script must guard __main__); returns
    its data.yaml path."""
    out = synthetic_dir(scale)
    if not (out / "data.yaml").is_file():
        counts = SYNTH_SCALES[scale]
        print(f"generating the synthetic stand-in ({scale}: {sum(counts.values())} images) in {out} ...")
        t0 = time.time()
        generate_synthetic(out, counts, seed=SYNTH_SEED)
        print(f"generated in {time.time() - t0:.1f} s")
    return out / "data.yaml"
