"""Behaviour of the dataset checks: every problem is one line naming the file (and line) and the fix."""

import os
import subprocess
import sys

import pytest

from harness.common import REPO_DIR, HarnessError
from harness.dataset import check_dataset, find_dataset
from harness.device import resolve_weights

KAGGLE_YAML = """train: /kaggle/input/ships-in-aerial-images/ships-aerial-images/train/images
val: /kaggle/input/ships-in-aerial-images/ships-aerial-images/valid/images
test: /kaggle/input/ships-in-aerial-images/ships-aerial-images/test/images
nc: 1
names: ['ship']
"""


def first_label(dataset, split="train"):
    return sorted((dataset / split / "labels").glob("*.txt"), key=lambda p: p.stat().st_size)[-1]


def break_label(dataset, row):
    path = first_label(dataset)
    path.write_text(path.read_text() + row + "\n")
    return path, len(path.read_text().splitlines())


def expect_error(yaml_path, *fragments):
    with pytest.raises(HarnessError) as e:
        check_dataset(yaml_path)
    message = str(e.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


def test_generated_dataset_passes_with_its_stats(dataset):
    stats = check_dataset(dataset / "data.yaml")
    assert stats["nc"] == 1 and stats["names"] == ["ship"]
    assert [stats[s][1] for s in ("train", "val", "test")] == [12, 6, 4]
    boxes = sum(len(p.read_text().splitlines()) for p in (dataset / "train" / "labels").glob("*.txt"))
    assert stats["train"][2] == boxes > 0


def test_kaggle_yaml_with_absolute_paths_resolves_against_its_folder(dataset):
    (dataset / "data.yaml").write_text(KAGGLE_YAML)
    stats = check_dataset(dataset / "data.yaml")
    assert stats["train"][0] == dataset / "train" / "images"
    assert stats["val"][0] == dataset / "valid" / "images"


def test_roboflow_relative_paths_resolve(dataset):
    (dataset / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\n"
                                       "nc: 1\nnames: ['ship']\n")
    assert check_dataset(dataset / "data.yaml")["val"][0] == dataset / "valid" / "images"


def test_unchanged_dataset_is_checked_from_cache_and_changes_are_seen(dataset):
    check_dataset(dataset / "data.yaml")
    path, line = break_label(dataset, "0 0.5 0.5 0.1")  # 4 columns
    expect_error(dataset / "data.yaml", f"{path}:{line}", "4 columns")


def test_an_unchanged_dataset_is_not_read_again(dataset, monkeypatch):
    # A Kaggle-size check reads about 10,000 label files and image headers. Unchanged (the same names, sizes
    # and mtimes), a dataset's verdict comes from the cache of that fingerprint: the second check opens none
    # of them.
    import harness.dataset
    first = check_dataset(dataset / "data.yaml")
    opened = []
    monkeypatch.setattr(harness.dataset, "check_label_file",
                        lambda path, nc: opened.append(path) or (1, None))
    monkeypatch.setattr(harness.dataset, "check_image_file", lambda path: opened.append(path))
    again = check_dataset(dataset / "data.yaml")
    assert opened == []
    assert again == first


@pytest.mark.parametrize("text, says", [
    ("train: [unclosed\n", "not valid YAML"),
    ("", "empty or not a mapping"),
    ("val: valid/images\nnc: 1\nnames: ['ship']\n", "no 'train:' entry"),
    ("train: train/images\nnc: 1\nnames: ['ship']\n", "no 'val:' entry"),
    ("train: train/images\nval: valid/images\nnc: 2\nnames: ['ship']\n", "nc: 2 but 1 names"),
    ("train: train/images\nval: valid/images\nnc: 1\n", "no 'names:' list"),
    ("train: nowhere/images\nval: valid/images\nnc: 1\nnames: ['ship']\n", "nowhere/images is not a folder"),
])
def test_broken_yaml_is_named_with_the_fix(dataset, text, says):
    (dataset / "data.yaml").write_text(text)
    expect_error(dataset / "data.yaml", dataset / "data.yaml", says)


def test_invalid_yaml_names_the_line(dataset):
    (dataset / "data.yaml").write_text("nc: 1\nnames: ['ship']\ntrain: [unclosed\n")
    expect_error(dataset / "data.yaml", "data.yaml:", "not valid YAML")


@pytest.mark.parametrize("row, says", [
    ("0 0.5 0.5 0.1", "4 columns, expected 5"),
    ("3 0.5 0.5 0.1 0.1", "class 3 out of range"),
    ("0 1.5 0.5 0.1 0.1", "normalized to [0, 1]"),
    ("0 0.5 -0.2 0.1 0.1", "normalized to [0, 1]"),
    ("0 0.5 0.5 0 0.1", "must be positive"),
    ("0 0.5 0.5 abc 0.1", "non-numeric"),
    ("nan 0.5 0.5 0.1 0.1", "not a finite number"),
    ("0 0.5 inf 0.1 0.1", "not a finite number"),
    ("0 0.5 0.5 0.1 -nan", "not a finite number"),
])
def test_bad_label_rows_name_file_and_line(dataset, row, says):
    path, line = break_label(dataset, row)
    expect_error(dataset / "data.yaml", f"{path}:{line}", says, "fix or delete")


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"not an image at all" * 20), "not an image"),
    (lambda p: p.write_bytes(bytes(range(256)) * 4), "not an image"),
])
@pytest.mark.parametrize("ultralytics_imported", [False, True])
def test_broken_images_are_named(dataset, damage, says, ultralytics_imported, monkeypatch):
    # Ultralytics patches PIL's Image.open on import: the check says the same after it
    if ultralytics_imported:
        import ultralytics.utils.patches  # noqa: F401
    else:
        from PIL import Image
        monkeypatch.setattr(Image, "open", getattr(sys.modules.get("ultralytics.utils.patches"),
                                                    "_image_open", Image.open))
    image = sorted((dataset / "valid" / "images").iterdir())[0]
    damage(image)
    expect_error(dataset / "data.yaml", image, says)


def test_a_truncated_png_is_named(dataset):
    import cv2
    image = sorted((dataset / "valid" / "images").iterdir())[0]
    png = image.with_suffix(".png")
    cv2.imwrite(str(png), cv2.imread(str(image)))
    image.unlink()
    png.write_bytes(png.read_bytes()[:-200])
    expect_error(dataset / "data.yaml", png, "damaged PNG image")


def test_a_train_split_without_boxes_is_an_error(dataset):
    for label in (dataset / "train" / "labels").iterdir():
        label.write_text("")
    expect_error(dataset / "data.yaml", dataset / "train" / "images", "12 images have no boxes")


def test_empty_split_is_an_error(dataset):
    for p in (dataset / "valid" / "images").iterdir():
        p.unlink()
    expect_error(dataset / "data.yaml", "no images in the val split")


def test_missing_labels_folder_is_an_error(dataset):
    import shutil
    shutil.rmtree(dataset / "train" / "labels")
    expect_error(dataset / "data.yaml", "no labels folder for the train split", dataset / "train" / "labels")


def test_a_few_broken_files_in_a_large_set_only_warn(tmp_path, capsys):
    import cv2
    import numpy as np
    for split, n in (("train", 120), ("valid", 4)):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(tmp_path / split / "images" / f"{i}.jpg"), np.full((32, 32, 3), i, np.uint8))
            (tmp_path / split / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "train" / "labels" / "7.txt").write_text("0 0.5 0.5 0.2\n")  # 1 of 120: under 1%
    (tmp_path / "data.yaml").write_text("train: train/images\nval: valid/images\nnc: 1\nnames: ['ship']\n")
    stats = check_dataset(tmp_path / "data.yaml")
    assert stats["train"][1] == 120
    assert "1 broken file(s) in train" in capsys.readouterr().out


def test_yolo_data_pointing_nowhere(monkeypatch, tmp_path):
    monkeypatch.setenv("YOLO_DATA", str(tmp_path / "missing.yaml"))
    with pytest.raises(HarnessError, match="YOLO_DATA=.*missing.yaml: no such file"):
        find_dataset()


def test_yolo_data_wins(monkeypatch, dataset):
    monkeypatch.setenv("YOLO_DATA", str(dataset / "data.yaml"))
    assert find_dataset() == (dataset / "data.yaml", "YOLO_DATA")


def test_prepare_cli_prints_stats_or_one_error_line(dataset):
    env = {**os.environ, "YOLO_DATA": str(dataset / "data.yaml")}
    ok = subprocess.run([sys.executable, "prepare.py"], cwd=REPO_DIR, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "train 12 images" in ok.stdout and "val 6 images" in ok.stdout
    (dataset / "data.yaml").write_text("nc: 1\n")
    bad = subprocess.run([sys.executable, "prepare.py"], cwd=REPO_DIR, env=env, capture_output=True,
                         text=True)
    assert bad.returncode != 0
    assert bad.stdout.strip().splitlines() == [f"error: {dataset / 'data.yaml'}: no 'names:' list; "
                                               "add e.g. names: ['ship']"]


def test_local_weights_are_used_and_missing_ones_fall_back_to_scratch(tmp_path, monkeypatch, capsys):
    from ultralytics import YOLO
    monkeypatch.chdir(tmp_path)
    assert resolve_weights("yolo11n.pt") == ("yolo11n.yaml",
                                             "yolo11n.yaml (from scratch: yolo11n.pt not found)")
    assert "training yolo11n.yaml from scratch" in capsys.readouterr().out
    YOLO("yolo11n.yaml").save(tmp_path / "yolo11n.pt")
    assert resolve_weights("yolo11n.pt") == ("yolo11n.pt", "yolo11n.pt (pretrained)")
    assert resolve_weights("yolo11s.yaml") == ("yolo11s.yaml", "yolo11s.yaml (from scratch)")


def test_truncated_jpeg_is_named(dataset):
    image = sorted((dataset / "valid" / "images").iterdir())[0]
    image.write_bytes(image.read_bytes()[:-100])
    expect_error(dataset / "data.yaml", image, "truncated JPEG")


def test_unreadable_label_file_is_named(dataset):
    label = first_label(dataset)
    label.unlink()
    label.mkdir()  # a folder where the file should be: unreadable even for root
    expect_error(dataset / "data.yaml", label, "unreadable")
