"""Behaviour of the procedural ship-imagery generator (the synthetic stand-in, harness/synthetic/)."""

import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from conftest import REPO, communicate_or_fail
from harness import common
from harness.dataset import check_dataset, find_dataset
from harness.synthetic import generate_synthetic, render_scene, save_sample_mosaic, write

TINY = {"train": 12, "valid": 4, "test": 4}
NAME_RE = re.compile(r"^synth_\d{5}_jpg\.rf\.[0-9a-f]{32}\.jpg$")
HANG_S = 300  # a process that has not ended by then hangs: it takes seconds even on a busy machine


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("gen") / "ships", TINY, seed=0, workers=2)


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(np.random.default_rng([123, i])) for i in range(30)]


def all_files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_data_yaml(dataset):
    root = dataset.parent
    assert dataset.name == "data.yaml"
    assert yaml.safe_load(dataset.read_text()) == {
        "train": "train/images", "val": "valid/images", "test": "test/images", "nc": 1, "names": ["ship"]}
    for split, count in TINY.items():
        images = sorted((root / split / "images").iterdir())
        labels = sorted((root / split / "labels").iterdir())
        assert len(images) == count and len(labels) == count
        assert all(NAME_RE.match(p.name) for p in images)
        assert [p.stem for p in images] == [p.stem for p in labels]
    assert not list(root.parent.glob("*.tmp-*")), "temp build folder left behind"


def test_label_rows_are_valid_and_inside_the_image(dataset):
    root = dataset.parent
    for label in root.glob("*/labels/*.txt"):
        image = cv2.imread(str(label.parent.parent / "images" / (label.stem + ".jpg")))
        h, w = image.shape[:2]
        for row in label.read_text().splitlines():
            parts = row.split()
            assert len(parts) == 5 and parts[0] == "0"
            assert all(re.fullmatch(r"\d\.\d{6}", v) for v in parts[1:])
            cx, cy, bw, bh = map(float, parts[1:])
            assert bw > 0 and bh > 0
            assert all(0 <= v <= 1 for v in (cx, cy, bw, bh))
            # box edges inside the image, allowing for the 6-decimal rounding
            assert cx - bw / 2 >= -1e-5 and cx + bw / 2 <= 1 + 1e-5
            assert cy - bh / 2 >= -1e-5 and cy + bh / 2 <= 1 + 1e-5
            assert bw * w >= 1.99 and bh * h >= 1.99


def test_same_seed_is_byte_identical_and_other_seed_differs(dataset, tmp_path):
    again = generate_synthetic(tmp_path / "again", TINY, seed=0, workers=1)
    other = generate_synthetic(tmp_path / "other", TINY, seed=1, workers=2)
    assert all_files(dataset.parent) == all_files(again.parent)
    a, b = all_files(dataset.parent), all_files(other.parent)
    assert not {p.name for p in a} & {p.name for p in b} - {"data.yaml"}, "names depend on the seed"
    def jpgs(files):  # sorted by index within a split
        return [v for k, v in files.items() if k.suffix == ".jpg"]
    assert all(x != y for x, y in zip(jpgs(a), jpgs(b)))


def test_boxes_are_the_bounds_of_visible_hull_masks(scenes):
    for scene in scenes:
        h, w = scene.image.shape[:2]
        assert scene.image.dtype == np.uint8 and scene.image.shape == (h, w, 3)
        assert len(scene.boxes) == len(scene.ship_masks)
        for (x0, y0, x1, y1), mask in zip(scene.boxes, scene.ship_masks):
            assert mask.shape == (h, w) and mask.dtype == bool
            ys, xs = np.nonzero(mask)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert mask.sum() >= 6 and x1 - x0 >= 2 and y1 - y0 >= 2


def test_no_label_comes_from_a_distractor(scenes):
    for scene in scenes:
        ships = np.zeros(scene.image.shape[:2], bool)
        for mask in scene.ship_masks:
            assert not (ships & mask).any(), "two ships share pixels"
            ships |= mask
        for mask in scene.distractor_masks:
            assert mask.any() and not (ships & mask).any(), "a distractor overlaps a labelled hull"


def test_scene_variety(scenes):
    counts = [len(s.boxes) for s in scenes]
    sizes = {s.image.shape[:2] for s in scenes}
    assert 0 in counts, "some scenes must have no ship"
    assert max(counts) >= 4
    assert sum(len(s.distractor_masks) > 0 for s in scenes) >= 5
    assert all(80 <= h <= 800 and 80 <= w <= 800 for h, w in sizes)
    assert len(sizes) > 20 and any(h != w for h, w in sizes)
    lengths = [max(b[2] - b[0], b[3] - b[1]) for s in scenes for b in s.boxes]
    assert min(lengths) < 12 and max(lengths) > 60, "ships from specks to large hulls"


def test_existing_folder_is_refused_and_untouched(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = [(p, p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*")]
    with pytest.raises(FileExistsError):
        generate_synthetic(out, TINY, seed=0, workers=1)
    assert [(p, p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*")] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_sample_mosaic(dataset, tmp_path):
    out = save_sample_mosaic(dataset, tmp_path / "mosaic.jpg", n=6, tile=128)
    mosaic = cv2.imread(str(out))
    assert mosaic is not None and mosaic.shape == (2 * 128, 3 * 128, 3)


def test_losing_the_rename_race_keeps_the_winner(tmp_path, monkeypatch):
    out, real_rename = tmp_path / "race", write.os.rename

    def other_process_wins(src, dst):  # another process finishes the same dataset first
        (tmp_path / "race" / "winner.txt").parent.mkdir()
        (tmp_path / "race" / "winner.txt").write_text("theirs")
        real_rename(src, dst)

    monkeypatch.setattr(write.os, "rename", other_process_wins)
    assert generate_synthetic(out, {"train": 2}, seed=0, workers=1) == out / "data.yaml"
    assert sorted(p.name for p in out.iterdir()) == ["winner.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race"], "temp build folder left behind"


def test_generation_works_after_cv2_was_used_in_this_process(tmp_path):
    # A forked worker inherits cv2's thread pool in a broken state and hangs; the pool must spawn. The process
    # runs apart, in a session of its own with its pool's workers: a hang fails this test and leaves no
    # process.
    code = ("import numpy as np; from harness.synthetic import generate_synthetic, render_scene; "
            "render_scene(np.random.default_rng(0)); "
            f"generate_synthetic({str(tmp_path / 'after_cv2')!r}, {{'valid': 2}}, seed=0, workers=1)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out, _ = communicate_or_fail(proc, HANG_S,
                                 f"generation hung after cv2 was used in the process: no end in {HANG_S} s")
    assert proc.returncode == 0, out[-3000:]
    assert (tmp_path / "after_cv2" / "data.yaml").is_file()


def test_prepare_checks_accept_the_generated_set(dataset):
    stats = check_dataset(dataset)
    assert [stats[s][1] for s in ("train", "val", "test")] == [TINY["train"], TINY["valid"], TINY["test"]]


def test_stand_in_is_generated_once_and_never_touched_again(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path))  # the generating child process reads this
    monkeypatch.setattr(common, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(common, "DEFAULT_DATA", tmp_path / "no-real-data" / "data.yaml")
    first = find_dataset()
    assert first == (tmp_path / "synthetic-small-seed0" / "data.yaml", "synthetic")
    assert check_dataset(first[0])["train"][1] == 300
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "synthetic-small-seed0").rglob("*")}
    assert find_dataset() == first
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "synthetic-small-seed0").rglob("*")} == before


def test_real_data_wins_over_the_stand_in(dataset, monkeypatch):
    monkeypatch.setattr(common, "DEFAULT_DATA", dataset)
    assert find_dataset() == (dataset, "real")
