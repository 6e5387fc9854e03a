"""
GPU benchmark (not a test): the model-only throughput ceiling, stand-in generation, dataset-check time,
profiled default train.py runs (throughput against the ceiling, where the training clock goes, the overhead
outside it, peak memory against nvidia-smi, the noise of fitness), and on request variants of train.py, a
longer budget, the GPU-only faults, validation at other sizes, the agent-edits table and smaller cards.

Every run trains a copy of the harness whose train.py is edited knob by knob by harness/knobs.py
(KNOB=VALUE sets train.py's `KNOB = ...` line, its comment kept; a lower-case name is an Ultralytics argument
added to model.train(...) after `seed=SEED,`). An edit that matches no line, or several, fails the bench
before anything runs, instead of measuring something else than it says. Prints a table last (every row names
its units), also written to OUT/table.txt.

Usage (repo root, GPU machine; the lent ones have `python3` and no uv, here it is `uv run bench/bench.py`):
    python3 bench/bench.py                        # ceiling, generation, checks, one default run: ~8 min
    python3 bench/bench.py --seeds 0 1 2          # one default run per seed: the noise between seeds
    python3 bench/bench.py --repeat 3             # the first seed 3 times: the noise of one seed
    python3 bench/bench.py --variant nogpudata:GPU_DATA=False,WORKERS=16
                                                  # also the same runs of train.py with these knobs (rows and
                                                  # files prefixed nogpudata-); --no-base: the variant only
    python3 bench/bench.py --variant rect:rect=True       # an Ultralytics argument beyond the knobs
    python3 bench/bench.py --long 1200            # also one run with a 1200 s budget (prepare.py edited)
    python3 bench/bench.py --faults               # also out-of-memory, and two agents at once on one GPU
    python3 bench/bench.py --valsizes 640 1280    # also bench/val.py on the last run's best.pt
    python3 bench/bench.py --cards all 24 16 12 8 80:IMGSZ=1280   # also smaller cards: a blocker holds all
                                                  # but N GiB (bench/cards.py; --cards-budget, 60 s)
    python3 bench/bench.py --edits 0 1            # also the agent-edits table on GPUs 0 and 1 (60 s each)
    python3 bench/bench.py --no-base --no-prep --edits 0 1 2 3 --only base val   # that table alone
    python3 bench/bench.py --table-only           # the agent-edits table of what OUT holds; nothing runs
    python3 bench/bench.py --no-prep ...          # skip generation and dataset checks (the stand-in exists)
    python3 bench/bench.py --ceiling-args=--compile   # also torch.compile in the ceiling (about 2 min more)
    python3 bench/bench.py --gpus 0 1 2 3 4 ...   # runs in parallel, one per card, in waves
    python3 bench/bench.py --ddp 2 --no-base      # one DDP run over GPUs 0 and 1 (DEVICE = [0, 1]; rows
                                                  # prefixed ddp2-, nvidia-smi on both cards); two agents at
                                                  # once, one GPU each: --gpus 0 1 --repeat 2
    python3 bench/bench.py --python .venv/bin/python ...  # the children in another interpreter (default:
                                                  # the one running the bench)

One default run takes about 5.7 min (the 300 s budget, ~40 s outside it); the default bench about 8 min
(the ceiling is measured again after the runs, and the reports divide by the faster). More runs outlast a
10-minute device command: spread them over the cards in one command (parallel runs share the host's CPUs
and disk: take throughput from a solo run), e.g. five noise runs on 8 GPUs:
    python3 bench/bench.py --gpus 0 1 2 3 4 --seeds 0 1 2 --repeat 3
or start them detached, in a folder that outlives the command, and collect in later calls; the same command
again resumes (a run whose log has a summary is reported, not rerun):
    mkdir -p /tmp/bench-out; setsid nohup python3 bench/bench.py --out /tmp/bench-out --seeds 0 1 2 \\
        --repeat 3 > /tmp/bench-out/bench.log 2>&1 < /dev/null &
    cat /tmp/bench-out/status; cp -r /tmp/bench-out/. "$OUT"/   # later: progress, then the files back
Files in OUT: table.txt, status, ceiling-*.json/.log (-after: measured again after the runs), and per run
LABEL.log (train.py's output), LABEL.profile.json (bench/profiler.py), LABEL.smi/.idle (nvidia-smi
MiB, bench/smi.py), LABEL.wall (start, end); edits/ and cards/ hold those tables' own.
"""

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import namedtuple
from functools import partial
from pathlib import Path

import report
import smi
from report import Row

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from harness.common import CACHE_DIR, HarnessError  # noqa: E402
from harness.knobs import edit_knobs, insert  # noqa: E402
from harness.record import knobs_of  # noqa: E402
from harness.summary import parse_summary  # noqa: E402

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

BENCH = REPO / "bench"
CEILING_KNOBS = ("MODEL", "IMGSZ", "BATCH", "NBS", "AMP", "OPTIMIZER")  # what ceiling.py reads
CEILING_TIMEOUT_S = 420
MODEL_LINE = "model = YOLO(run.weights)\n"  # the profiler attaches right after it
PROFILE_LINE = "import profiler; profiler.attach(model)  # bench.py: where the time goes\n"
SUMMARY_ROWS = ("fitness", "training_seconds", "total_seconds", "val_seconds", "peak_vram_mb", "epoch",
                "train_images_per_s", "weights")
OOM_KNOBS = {"MODEL": '"yolo11x.yaml"', "IMGSZ": "1280", "BATCH": "512", "WORKERS": "2"}
AGENTS_BUDGET_S = 60     # the two agents at once on one GPU
EDITS_BUDGET_S = 60      # each agent edit
EDIT_TIMEOUT_S = 600     # an edit's run still going after this is a hang
SHARE_OK = 0.7           # an edit trains at this share of its own ceiling at least, or its row says SLOW
# The agent-edits table: edits an agent is likely to make, each run beside its own channels-last ceiling
ADAPTIVE = {opt: {"OPTIMIZER": f'"{opt}"', "LR0": "0.001"} for opt in ("Adam", "AdamW", "NAdam", "RAdam",
                                                                        "RMSProp")}
EDITS = {
    "base": {},
    "yolo11s": {"MODEL": '"yolo11s.pt"'},
    "yolo11m": {"MODEL": '"yolo11m.pt"'},
    "imgsz320": {"IMGSZ": "320"},
    "imgsz1280": {"IMGSZ": "1280", "BATCH": "32"},
    "batch16": {"BATCH": "16"},
    "batch256": {"BATCH": "256"},
    **ADAPTIVE,
    "MuSGD": {"OPTIMIZER": '"MuSGD"'},
    "cos_lr": {"COS_LR": "True"},
    "mixup": {"MIXUP": "0.2"},
    "degrees": {"DEGREES": "10.0"},
    "flipud": {"FLIPUD": "0.5"},
    "close_mosaic0": {"CLOSE_MOSAIC": "0"},
    "freeze10": {"FREEZE": "10"},
    "val": {"VAL": "True"},
    "cache_ram": {"CACHE": '"ram"'},
    "loss_gains": {"box": "10.0", "cls": "1.0", "dfl": "2.0"},
    "dropout": {"dropout": "0.1"},
    "multi_scale": {"multi_scale": "0.5"},
    "rect": {"rect": "True"},
    "gpu_data_off": {"GPU_DATA": "False", "WORKERS": "16"},
}

Run = namedtuple("Run", "label variant seed repeat folder cards")  # cards: a DDP run's, else None

# ---------------------------------------------------------------------------
# Copies of the harness with knobs set
# ---------------------------------------------------------------------------


def edited_copy(folder, knobs=None, profile=True, prepare_knobs=None):
    """folder, made a copy of the harness whose train.py has these knobs (harness/knobs.py's checked edit:
    HarnessError where one matches no line) and, with profile, attaches bench/profiler.py; prepare_knobs set
    prepare.py's the same way. Returns folder."""
    train = edit_knobs((REPO / "train.py").read_text(), knobs or {})
    if profile:
        train = insert(train, MODEL_LINE, PROFILE_LINE)
    prepare = edit_knobs((REPO / "prepare.py").read_text(), prepare_knobs or {}, "prepare.py")
    folder.mkdir(parents=True)
    (folder / "train.py").write_text(train)
    (folder / "prepare.py").write_text(prepare)
    shutil.copytree(REPO / "harness", folder / "harness", ignore=shutil.ignore_patterns("__pycache__"))
    if profile:
        shutil.copy(BENCH / "profiler.py", folder)
    if (REPO / "weights").is_dir():  # pretrained weights, if any
        (folder / "weights").symlink_to(REPO / "weights")
    return folder


def parse_knobs(text):
    """'GPU_DATA=False,WORKERS=16' -> {'GPU_DATA': 'False', 'WORKERS': '16'}; a comma inside a value
    (DEVICE=[0, 1]) stays in it."""
    knobs = {}
    for item in re.split(r",(?=\s*\w+=)", text) if text else []:
        name, eq, value = item.strip().partition("=")
        if not (eq and re.fullmatch(r"\w+", name) and value):
            sys.exit(f"bench: {item!r} is not KNOB=VALUE")
        knobs[name] = value
    return knobs


def parse_variant(spec):
    """'nogpudata:GPU_DATA=False,WORKERS=16' -> ('nogpudata', knobs, None)."""
    label, colon, knobs = spec.partition(":")
    if not (colon and re.fullmatch(r"[\w.-]+", label)) or label == "base":
        sys.exit(f"bench: --variant {spec!r} is not LABEL:KNOB=VALUE,... (LABEL not 'base')")
    return label, parse_knobs(knobs), None

# ---------------------------------------------------------------------------
# Running things
# ---------------------------------------------------------------------------


def run_logged(cmd, log, cwd=REPO, env=None, timeout=None, mode="w"):
    """Exit code of cmd, its stdout and stderr into log. Past timeout it gets SIGTERM (the harness then stops
    its own workers), then SIGKILL, and returns 124 as timeout(1) does."""
    with open(log, mode) as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=f,
                                stderr=subprocess.STDOUT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            return 124


def card_name():
    """The first GPU's name, or 'no GPU'."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "no GPU"


def finished(log, errors=False):
    """Whether log is a run that ended: a summary with fitness, or (errors) an `error:` last line."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    if "fitness" in parse_summary(text):
        return True
    return errors and text.rstrip().rsplit("\n", 1)[-1].startswith("error:")


def train_one(cfg, label, folder, out, visible=None, cards="0", env=None, timeout=None, errors=False):
    """train.py in folder on the cards `visible` (CUDA_VISIBLE_DEVICES; None: all), nvidia-smi sampling
    `cards` every 200 ms; writes out/LABEL.log, .wall, .idle and .smi. A run that finished in an earlier
    call into the same out is reported, not rerun."""
    log = out / f"{label}.log"
    if finished(log, errors):
        print(f"{label}: finished in an earlier call; reporting its files in {out}")
        return
    status(cfg, f"running {label}" + (f" on GPU {visible}" if visible is not None else ""))
    (out / f"{label}.profile.json").unlink(missing_ok=True)  # a failed attempt's must not pass for this one's
    env = {"BENCH_PROFILE_OUT": str(out / f"{label}.profile.json"), **(env or {})}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(visible)
    with smi.sampling(cards, out, label):
        start = time.time()
        run_logged([*cfg.py, "train.py"], log, cwd=folder, env=env, timeout=timeout)
        (out / f"{label}.wall").write_text(f"{start}\n{time.time()}\n")


def in_parallel(jobs):
    """Runs each job (a function of no arguments) in its own thread; returns when all have ended."""
    threads = [threading.Thread(target=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def measure_ceiling(cfg, train_py, path, flags=(), visible=None):
    """Writes path: bench/ceiling.py's JSON for train_py's knobs (its output in path's .log), unless an
    earlier call into the same OUT did."""
    if path.is_file() and path.stat().st_size:
        return
    env = {"CUDA_VISIBLE_DEVICES": str(visible)} if visible is not None else {}
    run_logged([*cfg.py, str(BENCH / "ceiling.py"), "--train", str(train_py), "--out", str(path),
                *flags], path.with_suffix(".log"), env=env, timeout=cfg.ceiling_timeout)


def ceiling_knobs(train_py):
    """The knobs of train_py that the ceiling reads, as JSON text: two train.py's with the same share one
    ceiling."""
    knobs = knobs_of(Path(train_py).read_text())
    return json.dumps({name: knobs.get(name) for name in CEILING_KNOBS}, default=str)

# ---------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------


def status(cfg, text):
    line = f"{time.strftime('%H:%M:%S')} {text}"
    print(line, flush=True)
    (cfg.out / "status").write_text(line + "\n")


def emit(cfg, text):
    """Prints text and appends it to OUT/table.txt: the one place the bench's rows and tables are printed."""
    text = text.rstrip("\n")
    if text:
        print(text, flush=True)
        with open(cfg.out / "table.txt", "a") as f:
            f.write(text + "\n")


def emit_rows(cfg, rows):
    emit(cfg, "\n".join(report.lines(rows)))


def row(cfg, name, value):
    emit_rows(cfg, [Row(name, value)])


def report_rows(cfg, what, label, *args):
    """Emits the rows of report.py's function `what` for label; returns them ([] where it failed)."""
    try:
        rows = what(label, *args)
    except Exception as e:  # a torn profile or JSON of a failed run: a row saying so, and the bench goes on
        emit_rows(cfg, [Row(f"{label}: {what.__name__}", f"failed: {e!r}")])
        return []
    emit_rows(cfg, rows)
    return rows


def wall_seconds(path):
    """The seconds between the start and end in a LABEL.wall file; None without one."""
    times = [float(x) for x in path.read_text().split()] if path.is_file() else []
    return times[1] - times[0] if len(times) == 2 else None


def last_line(path):
    lines = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return lines[-1] if lines else "(empty log)"


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def after_of(ceiling):
    return ceiling.with_name(f"{ceiling.stem}-after.json")


def report_run(cfg, label, ceiling):
    """The rows of one run: nvidia-smi's peak, the summary, DDP's lines, then report.py's."""
    out, files = cfg.out, {ext: cfg.out / f"{label}.{ext}" for ext in ("log", "smi", "idle", "wall")}
    peak = smi.peak_above_idle(files["smi"], files["idle"])
    row(cfg, f"{label}: nvidia-smi peak minus idle (MiB)", "n/a" if peak is None else f"{peak:.0f}")
    text = files["log"].read_text(errors="replace") if files["log"].is_file() else ""
    summary = parse_summary(text)
    for key in SUMMARY_ROWS:
        row(cfg, f"{label}: {key}", summary.get(key, f"(missing: {last_line(files['log'])})"))
    for line in re.findall(r"^DDP: (?:peak|the workers).*$", text, flags=re.M):
        row(cfg, label, line)
    report_rows(cfg, report.run_rows, label, str(files["log"]), str(out / f"{label}.profile.json"),
                 [str(ceiling), str(after_of(ceiling))], *(str(files[k]) for k in ("wall", "smi", "idle")))


def report_noise(cfg, variant, runs):
    """Fitness over the variant's runs (mean, max-min, std): same seed, first of each seed, and all runs
    where that is another group."""
    logs = [(run, str(cfg.out / f"{run.label}.log")) for run in runs if run.variant == variant]
    same = [log for run, log in logs if run.seed == cfg.seeds[0]]
    firsts = [log for run, log in logs if run.repeat == 1]
    if len(same) > 1:
        report_rows(cfg, report.noise_rows, f"{variant} same seed {cfg.seeds[0]}", same)
    if len(firsts) > 1:
        report_rows(cfg, report.noise_rows, f"{variant} seeds {' '.join(map(str, cfg.seeds))}", firsts)
    if len(logs) == 1 or len(logs) not in (len(same), len(firsts)):
        report_rows(cfg, report.noise_rows, f"{variant} all runs", [log for _, log in logs])

# ---------------------------------------------------------------------------
# The sections, in the order they run
# ---------------------------------------------------------------------------


def bench_ceilings(cfg, ceilings, after=False):
    """Measures each ceiling ({JSON: train.py}) not measured yet and emits its rows; after: each again in
    its fastest layout, into its -after.json."""
    for path, train_py in ceilings.items():
        flags = shlex.split(cfg.ceiling_args)
        if after:
            layout = read_json(path).get("best_layout")
            if not layout:
                continue
            path, flags = after_of(path), ["--layouts", layout]
        if not path.is_file():
            status(cfg, f"measuring {path.stem}")
        measure_ceiling(cfg, train_py, path, flags)
        if not report_rows(cfg, report.ceiling_rows, path.stem, path) and not after:
            row(cfg, path.stem, f"failed: see {path.with_suffix('.log')}")


def bench_prep(cfg):
    """Rows: the stand-in at Kaggle scale (13,435 images) on all cores, then the dataset check cold
    (nothing cached) and warm (fingerprint cached)."""
    generate = [*cfg.py, "prepare.py", "--synthetic", "full"]
    status(cfg, "generating the stand-in")
    for name, log, mode in ((f"generate full stand-in (s, {os.cpu_count()} cores)", "generate.log", "w"),
                            ("dataset check, cold (s, incl. imports)", "check.log", "w"),
                            ("dataset check, warm (s, incl. imports)", "check.log", "a")):
        if "cold" in name:
            shutil.rmtree(CACHE_DIR / "checks", ignore_errors=True)
        t = time.time()
        run_logged(generate, cfg.out / log, mode=mode)
        row(cfg, name, f"{time.time() - t:.1f}")


def train_run(cfg, run, gpu):
    """One run on card gpu of --gpus (None: the cards CUDA_VISIBLE_DEVICES leaves), a DDP run on its own."""
    cards = run.cards or gpu
    train_one(cfg, run.label, run.folder, cfg.out, visible=cards if cfg.gpus else None, cards=cards or "0")


def train_runs(cfg, runs):
    """Trains the runs: in waves of one per card of --gpus at once, else one after another."""
    gpus = cfg.gpus or [None]
    for i in range(0, len(runs), len(gpus)):
        in_parallel([partial(train_run, cfg, run, gpu) for run, gpu in zip(runs[i:i + len(gpus)], gpus)])


def bench_val(cfg, folder):
    """bench/val.py on the run's best.pt at --valsizes: its rows after its card line."""
    status(cfg, "bench_val")
    log = cfg.out / "bench_val.log"
    run_logged([*cfg.py, str(BENCH / "val.py"), "--weights", str(folder / "run/weights/best.pt"),
                "--data", str(folder / "run/data.yaml"), "--imgsz", *map(str, cfg.valsizes)], log)
    lines = log.read_text(errors="replace").splitlines()
    card = next((i for i, line in enumerate(lines) if line.startswith("card")), len(lines))
    emit(cfg, "\n".join(lines[card + 1:]) or f"bench_val: failed, see {log}")


def bench_edits(cfg, folders):
    """The agent-edits table: each edit ({label: folder}) run for --edits-budget seconds beside its own
    channels-last ceiling, the cards of --edits taking one edit at a time each; files in OUT/edits."""
    out = cfg.out / "edits"
    out.mkdir(exist_ok=True)
    claimed, lock = set(), threading.Lock()

    def run_edit(label, gpu):
        folder, log = folders[label], out / f"{label}.log"
        if finished(log, errors=True):
            return
        digest = hashlib.md5(ceiling_knobs(folder / "train.py").encode())
        ceiling = out / f"ceiling-{digest.hexdigest()[:8]}.json"  # shared by edits with the same knobs
        (out / f"{label}.ceiling").write_text(ceiling.name + "\n")
        with lock:
            mine = ceiling not in claimed
            claimed.add(ceiling)
        if mine:
            measure_ceiling(cfg, folder / "train.py", ceiling, ["--layouts", "channels_last"], visible=gpu)
        train_one(cfg, label, folder, out, visible=gpu, cards=gpu, timeout=EDIT_TIMEOUT_S, errors=True,
                  env={"AUTORESEARCH_TIME_BUDGET": str(cfg.edits_budget)})

    def card(g, gpu):  # card g takes edits g, g + cards, ...
        for label in labels[g::len(cfg.edits)]:
            run_edit(label, gpu)

    status(cfg, "agent edits")
    labels = list(folders)
    in_parallel([partial(card, g, gpu) for g, gpu in enumerate(cfg.edits)])
    table = "\n".join(edits_table(out, labels, cfg.edits_budget))
    (out / "table.txt").write_text(table + "\n")
    emit(cfg, table)


def edits_table(out, labels, budget):
    """The agent-edits table's lines: a header, then per edit its outcome (ok: steady img/s at least
    SHARE_OK of its ceiling, else SLOW; error@start or error@trained: an `error:` line before or after the
    training clock started), throughput, epochs, fitness and wall clock."""
    lines = [f"card: {card_name()}; budget per edit: {budget:g} s",
             f"{'edit':<14} {'outcome':<11} {'steady img/s':>12} {'ceiling':>8} {'share':>6} {'epochs':>6} "
             f"{'fitness':>8} {'wall s':>7}  note"]
    for label in labels:
        if not (out / f"{label}.log").is_file():
            lines.append(f"{label:<14} not run")
            continue
        text = (out / f"{label}.log").read_text(errors="replace")
        summary, wall = parse_summary(text), wall_seconds(out / f"{label}.wall")
        wall_s = "?" if wall is None else f"{wall:.0f}"
        profile = read_json(out / f"{label}.profile.json")
        if "fitness" not in summary:
            when = "trained" if "clock_start" in profile.get("moments", {}) else "start"
            lines.append(f"{label:<14} {'error@' + when:<11} {'':>44} {wall_s:>7}  "
                         f"{last_line(out / f'{label}.log')[:150]}")
            continue
        steady = profile.get("totals", {}).get("steady_img_per_s", 0.0)
        name = (out / f"{label}.ceiling").read_text().strip() if (out / f"{label}.ceiling").is_file() else ""
        ceiling = read_json(out / name).get("best_img_per_s") or 0.0
        share = steady / ceiling if ceiling else 0.0
        outcome = "no ceiling" if not ceiling else "ok" if share >= SHARE_OK else "SLOW"
        lines.append(f"{label:<14} {outcome:<11} {steady:>12.1f} {ceiling:>8.1f} {100 * share:>5.1f}% "
                     f"{summary['epoch']:>6} {float(summary['fitness']):>8.4f} {wall_s:>7}  "
                     f"val_seconds {summary.get('val_seconds', '?')}")
    return lines


def bench_cards(cfg):
    """bench/cards.py on the cards of --cards; its table, or a row saying it failed."""
    status(cfg, "cards")
    run_logged([*cfg.py, str(BENCH / "cards.py"), "--out", str(cfg.out / "cards"), "--budget",
                str(cfg.cards_budget), *cfg.cards], cfg.out / "cards.log")
    table = cfg.out / "cards" / "cards.txt"
    if table.is_file():
        emit(cfg, table.read_text())
    else:
        row(cfg, "cards", f"failed: see {cfg.out}/cards.log")


def bench_faults(cfg, oom, agents):
    """Rows: how an out-of-memory run ends, and two agents at once on one GPU (each its own copy)."""
    status(cfg, "faults")
    run_logged([*cfg.py, "train.py"], cfg.out / "oom.log", cwd=oom)
    row(cfg, "out of memory: last line", last_line(cfg.out / "oom.log"))
    budget = {"AUTORESEARCH_TIME_BUDGET": str(AGENTS_BUDGET_S)}
    in_parallel([partial(train_one, cfg, f"agent{i}", folder, cfg.out, env=budget)
                 for i, folder in enumerate(agents, 1)])
    for i in range(1, len(agents) + 1):
        s = parse_summary((cfg.out / f"agent{i}.log").read_text(errors="replace"))
        row(cfg, f"agent{i} of 2 at once: run_dir, fitness",
            f"{s.get('run_dir', '(missing)')}, {s.get('fitness', '(missing)')}")

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    p.add_argument("--out", default="bench-out", help="folder for logs, profiles and table.txt")
    p.add_argument("--python", default=sys.executable, help="interpreter (a command line) for the children")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    p.add_argument("--repeat", type=int, default=1, help="runs of the first seed")
    p.add_argument("--variant", action="append", default=[], type=parse_variant,
                   help="LABEL:KNOB=VALUE,...: also these runs of an edited train.py (again for more)")
    p.add_argument("--no-base", dest="base", action="store_false", help="not the default train.py's runs")
    p.add_argument("--no-prep", dest="prep", action="store_false", help="no generation or dataset checks")
    p.add_argument("--ddp", type=int, help="also a variant over GPUs 0 .. N-1 (DEVICE = [0, ..., N-1])")
    p.add_argument("--gpus", nargs="+", help="cards to spread the runs over, one run per card at once")
    p.add_argument("--ceiling-args", default="", help="more ceiling.py flags: --ceiling-args=--compile")
    p.add_argument("--ceiling-timeout", type=float, default=CEILING_TIMEOUT_S, help="seconds per ceiling")
    p.add_argument("--long", type=int, help="also one run with this TIME_BUDGET (s) in prepare.py")
    p.add_argument("--faults", action="store_true", help="also out-of-memory and two agents on one GPU")
    p.add_argument("--valsizes", type=int, nargs="+", help="also val.py on the last run at these sizes")
    p.add_argument("--edits", nargs="+", help="also the agent-edits table, spread over these cards")
    p.add_argument("--only", nargs="+", choices=list(EDITS), help="those edits only")
    p.add_argument("--edits-budget", type=float, default=EDITS_BUDGET_S, help="budget of each edit (s)")
    p.add_argument("--table-only", action="store_true", help="the agent-edits table of what OUT holds")
    p.add_argument("--cards", nargs="+", help="also smaller cards: all, or GiB free, optionally :KNOB=V,...")
    p.add_argument("--cards-budget", type=float, default=60, help="budget of each card's run (s)")
    cfg = p.parse_args(argv)
    cfg.py, cfg.out = shlex.split(cfg.python), Path(cfg.out).resolve()  # absolute: the runs cd elsewhere
    if os.sep in cfg.py[0]:
        cfg.py[0] = os.path.abspath(cfg.py[0])
    return cfg


def variants_of(cfg):
    """[(label, knobs, cards)]: the base, each --variant, and the DDP run."""
    variants = [("base", {}, None)] if cfg.base else []
    variants += cfg.variant
    if cfg.ddp:
        cards = list(range(cfg.ddp))
        variants.append((f"ddp{cfg.ddp}", {"DEVICE": str(cards)}, ",".join(map(str, cards))))
    return variants


def plan(cfg):
    """plan_copies(cfg) in a folder of this call's own (two benches never share one); where an edit matches
    no line, or several, the folder is removed and the bench exits, naming the edit."""
    cfg.work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        return plan_copies(cfg)
    except HarnessError as e:
        shutil.rmtree(cfg.work)
        sys.exit(f"bench: {e}")


def plan_copies(cfg):
    """Every copy of the harness this call trains, made before anything runs (an edit that matches no line
    exits here): (runs, {edit: folder}, the long run's folder, the faults' folders)."""
    runs = []
    for label, knobs, cards in variants_of(cfg):
        prefix = "" if label == "base" else f"{label}-"
        for seed in cfg.seeds:
            for r in range(1, (cfg.repeat if seed == cfg.seeds[0] else 1) + 1):
                name = f"{prefix}seed{seed}" + (f"-r{r}" if r > 1 else "")
                runs.append(Run(name, label, seed, r, edited_copy(cfg.work / name, {"SEED": seed, **knobs}),
                                cards))
    edits = {label: edited_copy(cfg.work / "edits" / label, EDITS[label])
             for label in cfg.only or EDITS} if cfg.edits else {}
    long = edited_copy(cfg.work / "long", prepare_knobs={"TIME_BUDGET": cfg.long}) if cfg.long else None
    faults = (edited_copy(cfg.work / "oom", OOM_KNOBS, profile=False),
              [edited_copy(cfg.work / f"agent{i}", profile=False) for i in (1, 2)]) if cfg.faults else None
    for spec in cfg.cards or []:  # cards.py edits its own copies, after the runs: check its knobs now
        edit_knobs((REPO / "train.py").read_text(), parse_knobs(spec.partition(":")[2]))
    return runs, edits, long, faults


def ceiling_files(cfg, runs):
    """({variant: its ceiling JSON}, {JSON: the train.py it reads}): a variant whose ceiling knobs are the
    base's shares the base's ceiling."""
    first = {}
    for run in runs:
        first.setdefault(run.variant, run.folder / "train.py")
    base = ceiling_knobs(first["base"]) if "base" in first else None
    ceiling_of = {v: cfg.out / ("ceiling-base.json" if v == "base" or ceiling_knobs(train_py) == base
                                else f"ceiling-{v}.json") for v, train_py in first.items()}
    reads = {}
    for v, path in ceiling_of.items():
        reads.setdefault(path, first[v])
    return ceiling_of, reads


def main(argv=None):
    cfg = parse_args(argv)
    if cfg.table_only:
        table = "\n".join(edits_table(cfg.out / "edits", cfg.only or list(EDITS), cfg.edits_budget))
        if (cfg.out / "edits").is_dir():
            (cfg.out / "edits" / "table.txt").write_text(table + "\n")
        print(table)
        return
    runs, edits, long, faults = plan(cfg)
    os.environ["PYTHONUNBUFFERED"] = "1"
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "table.txt").write_text("")
    status(cfg, "started")
    row(cfg, "card", card_name())
    ceiling_of, ceilings = ceiling_files(cfg, runs)
    bench_ceilings(cfg, ceilings)
    if cfg.prep:
        bench_prep(cfg)
    train_runs(cfg, runs)
    bench_ceilings(cfg, ceilings, after=True)  # the host moves the ceiling between calls: the faster counts
    for variant, ceiling in ceiling_of.items():
        for run in runs:
            if run.variant == variant:
                report_run(cfg, run.label, ceiling)
        report_noise(cfg, variant, runs)
    if cfg.valsizes and runs:
        bench_val(cfg, runs[-1].folder)
    if edits:
        bench_edits(cfg, edits)
    if cfg.cards:
        bench_cards(cfg)
    if long:
        gpu = cfg.gpus[0] if cfg.gpus else None
        train_one(cfg, f"run{cfg.long}", long, cfg.out, visible=gpu, cards=gpu or "0")
        report_run(cfg, f"run{cfg.long}", cfg.out / "ceiling-base.json")
    if faults:
        bench_faults(cfg, *faults)
    status(cfg, "done")
    print("\n" + (cfg.out / "table.txt").read_text(), end="")


if __name__ == "__main__":
    main()
