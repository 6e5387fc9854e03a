"""What a shell can do around the supervisor, caught by construction: the dataset or the read-only files
changed between two runs of one night, a process that outlives its run, and the val or test split read while
the child runs. Each attack is made the way an agent's shell or train.py would make it; the plain functions
behind the checks are tested directly."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

from conftest import (
    REPO,
    assert_failed,
    commit_all,
    make_repo,
    run_train,
    snapshot,
)
from harness import night, progress, record, watch
from harness.dataset import SPLITS, check_dataset, content_fingerprint, describe_changes, split_files, views


def checked(data_yaml):
    """(stats, content fingerprint) of a dataset, as the supervisor takes them."""
    stats = check_dataset(data_yaml)
    return stats, content_fingerprint(data_yaml, [stats[s].folder for s in SPLITS if s in stats])[0]


def merge_val_into_train(data):
    """The agent's shell copies valid/images and valid/labels into train/."""
    for sub in ("images", "labels"):
        for f in (data / "valid" / sub).iterdir():
            shutil.copy(f, data / "train" / sub / f"v_{f.name}")

# ---------------------------------------------------------------------------
# One dataset a night
# ---------------------------------------------------------------------------


def test_a_dataset_is_known_by_its_content_wherever_it_lies(dataset, tmp_path):
    copy = shutil.copytree(dataset, tmp_path / "elsewhere")
    key, files = night.dataset_of(*checked(dataset / "data.yaml"))
    assert night.dataset_of(*checked(copy / "data.yaml"))[0] == key
    assert "val/images/" + sorted((dataset / "valid" / "images").iterdir())[0].name in files
    merge_val_into_train(copy)
    merged, merged_files = night.dataset_of(*checked(copy / "data.yaml"))
    assert merged != key
    added = 2 * len(os.listdir(copy / "valid" / "images"))
    assert describe_changes(files, merged_files).startswith(f"{added} added (train/images/v_")


def test_the_val_split_merged_into_train_between_runs_ends_the_next_run_until_a_new_night(dataset, tmp_path):
    repo = make_repo(tmp_path)
    assert run_train(repo, dataset / "data.yaml", budget=1)[0] == 0
    merge_val_into_train(dataset)
    kept = snapshot(repo / "record", repo / "run")
    rc, log = run_train(repo, dataset / "data.yaml", budget=1)
    last = assert_failed(rc, log, "error: the dataset differs from the night's baseline (")
    assert "added (train/images/v_" in last and "`uv run prepare.py night`" in last
    assert "train.py| " not in log  # ended before the child started
    assert snapshot(repo / "run") == {p: v for p, v in kept.items() if p.is_relative_to(repo / "run")}
    lines = record.read_record(repo / "record" / "runs.jsonl")
    assert len(lines) == 2 and lines[1]["dataset"] != lines[0]["dataset"] and lines[1]["error"]

    out = subprocess.run([sys.executable, "prepare.py", "night"], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    old = next((repo / "record" / "nights").iterdir()) / "runs.jsonl"
    assert record.read_record(old) == lines and not (repo / "record" / "runs.jsonl").exists()
    rc, log = run_train(repo, dataset / "data.yaml", budget=1)
    assert rc == 0, log[-3000:]

# ---------------------------------------------------------------------------
# One contract a night
# ---------------------------------------------------------------------------


def test_the_contract_is_every_read_only_file(tmp_path):
    repo = make_repo(tmp_path)
    before = night.contract(repo)
    assert {"prepare.py", "harness/validation.py", "harness/night.py"} <= set(before)
    assert not [name for name in before if "__pycache__" in name or name.startswith(("train.py", "record"))]
    (repo / "harness" / "validation.py").write_text("# faster validation\n")
    assert night.contract_changes(before, night.contract(repo)) == ["harness/validation.py"]


def test_a_read_only_file_edited_and_committed_ends_the_next_run_and_progress_names_both(tiny_data, tmp_path):
    repo = make_repo(tmp_path)
    base = commit_all(repo)
    assert run_train(repo, tiny_data / "data.yaml", budget=1)[0] == 0
    validation = repo / "harness" / "validation.py"
    validation.write_text(validation.read_text().replace('split="val"', 'split="train"') + "\n# faster\n")
    commit_all(repo, "faster validation")
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    last = assert_failed(rc, log, "error: read-only files differ from the night's baseline (")
    assert f"harness/validation.py; put them back: `git checkout {base[:7]} -- harness/validation.py`" in last

    (repo / "results.tsv").write_text("commit\tmetric\tmemory_gb\tstatus\tdescription\n")
    out = subprocess.run([sys.executable, "prepare.py", "progress"], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "line 2 (" in out.stderr and "read-only files differ from the night's baseline's (line 1): " \
        "harness/validation.py" in out.stderr
    assert re.search(r"commit [0-9a-f]{7} faster validation: harness/validation.py: changed read-only files",
                     out.stderr), out.stderr


def test_progress_names_a_run_of_another_dataset_and_never_pairs_it(tmp_path):
    runs = [{"train_py": "a", "dataset": "d1", "contract": {"prepare.py": "1"}, "fitness": 0.50},
            {"train_py": "a", "dataset": "d2", "contract": {"prepare.py": "1"}, "fitness": 0.60},
            {"train_py": "a", "dataset": "d1", "contract": {"prepare.py": "2"}, "fitness": 0.51}]
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps({"commit": "abcdef0123", "summary": {"fitness": str(r.pop("fitness"))},
                                        **r}) + "\n" for r in runs))
    lines = record.read_record(path)
    warnings = progress.night_warnings(lines, path)
    assert [w.split(": ", 1)[1] for w in warnings] == [
        "another dataset than the night's baseline's (line 1); its runs are not compared with the night's",
        "read-only files differ from the night's baseline's (line 1): prepare.py"]
    assert progress.noise_floor(lines)[0] == 0.51 - 0.50  # never 0.60 - 0.50

# ---------------------------------------------------------------------------
# A run's processes end with it
# ---------------------------------------------------------------------------

DETACHER = """
import os, subprocess, sys, time
from harness import supervisor
supervisor.adopt_orphans()
middle = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.Popen([sys.executable, "
                           "'-c', 'import time; time.sleep(60)'], start_new_session=True)"])
middle.wait()  # the detached sleeper's parent is gone: it is this process's child now
time.sleep(0.5)
print(supervisor.stop_leftovers(grace=0.5), supervisor.descendants(os.getpid()))
"""


def test_a_detached_process_stays_below_the_supervisor_and_is_stopped_at_the_end():
    out = subprocess.run([sys.executable, "-c", DETACHER], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"\['\d+ \(\S*python\S* -c import time; time.sleep\(60\)\)'\] \[\]\n",
                        out.stdout), out.stdout


def test_a_process_that_outlives_the_run_ends_it_naming_its_pid_and_command_line(tiny_data, tmp_path):
    start = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
             "'import time; time.sleep(120)'], start_new_session=True)")
    repo = make_repo(tmp_path, before_train=start)
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    last = assert_failed(rc, log, "error: train.py left 1 process running after it exited, now stopped: ")
    pid = int(re.search(r"now stopped: (\d+) \(\S*python\S* -c import time; time.sleep\(120\)\)", last)[1])
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split(")")[1][:3]

# ---------------------------------------------------------------------------
# The held-out splits while the child runs
# ---------------------------------------------------------------------------


def test_the_watch_counts_every_process_s_opens_in_folders_and_their_subfolders(tmp_path):
    (tmp_path / "val" / "deep").mkdir(parents=True)
    files = [tmp_path / "val" / "a.jpg", tmp_path / "val" / "deep" / "b.txt", tmp_path / "elsewhere.jpg"]
    for f in files:
        f.write_bytes(b"x")
    seen = watch.OpenWatch([tmp_path / "val"])
    files[0].read_bytes()
    subprocess.run([sys.executable, "-c", f"open({str(files[1])!r}).read(); open({str(files[0])!r}).read()"],
                   check=True)
    files[2].read_bytes()
    os.listdir(tmp_path / "val")
    assert seen.stop() == ({str(files[0]): 2, str(files[1]): 1}, False)


def test_the_child_s_val_split_is_a_view_of_links_whose_opens_are_not_the_dataset_s(dataset, tmp_path):
    stats = check_dataset(dataset / "data.yaml")
    child, view = views(stats, tmp_path / "view")
    assert child["val"].folder == view == tmp_path / "view" / "val" / "images"
    assert child["test"] == stats["test"] and child["train"] == stats["train"]
    for source, linked in zip(split_files(stats["val"].folder), split_files(view)):
        assert [p.name for p in linked] == [p.name for p in source]
        assert all(os.path.samefile(a, b) for a, b in zip(linked, source) if a.is_file())
    seen = watch.OpenWatch([stats["val"].folder])
    split_files(view)[0][0].read_bytes()
    assert seen.stop() == ({}, False)


def test_held_out_reads_break_the_guard_by_split_and_allowance(tmp_path):
    guard = watch.Guard(closed={"val": [tmp_path / "valid"], "test": [tmp_path / "test"]},
                        view=[tmp_path / "view"], allowance=1)
    opens = {str(tmp_path / "view" / "a.jpg"): 1, str(tmp_path / "view" / "b.jpg"): 2,
             str(tmp_path / "test" / "c.jpg"): 3, str(tmp_path / "valid" / "d.txt"): 1,
             str(tmp_path / "train" / "e.jpg"): 9}
    assert watch.reads(opens, guard) == [
        f"the test split's {tmp_path / 'test' / 'c.jpg'} opened 3 times",
        f"the val split's {tmp_path / 'view' / 'b.jpg'} opened 2 times, past the validations' 1",
        f"the val split's {tmp_path / 'valid' / 'd.txt'} opened 1 time"]
    assert watch.reads({str(tmp_path / "view" / "a.jpg"): 1}, dataclasses.replace(guard, allowance=0)) == [
        f"the val split's {tmp_path / 'view' / 'a.jpg'} opened 1 time, past the validations' 0"]


TRAIN_ON_VAL = """
def train_on_val(trainer):
    from ultralytics.data.build import build_yolo_dataset
    extra = build_yolo_dataset(trainer.args, trainer.data["val"], 4, trainer.data, mode="train")
    for i in range(len(extra)):
        extra[i]  # a real attack steps the optimizer on these batches
model.add_callback("on_train_epoch_end", train_on_val)
"""


def test_training_on_the_val_split_through_a_dataset_of_its_own_ends_the_run(tiny_data, tmp_path):
    repo = make_repo(tmp_path, before_train=textwrap.dedent(TRAIN_ON_VAL))
    rc, log = run_train(repo, tiny_data / "data.yaml", budget=1)
    last = assert_failed(rc, log, "error: the held-out splits were read while train.py ran: the val split's ")
    assert str(repo / "run" / "view" / "val") in last and "past the validations' 0" in last


def test_the_dataset_checks_read_past_another_run_s_watch(dataset):
    seen = watch.OpenWatch([dataset / "valid", dataset / "test"])  # another run's child is being watched
    stats = check_dataset(dataset / "data.yaml")  # a new dataset: every image and label is read
    content_fingerprint(dataset / "data.yaml", [stats[s].folder for s in SPLITS if s in stats])
    assert seen.stop() == ({}, False)
