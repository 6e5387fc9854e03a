"""Watching the night: results.tsv and the run record (harness/record.py) -> a few lines of text and
progress.png (`uv run prepare.py progress`): the counts, the best run, the noise floor of this machine, the
rows that disagree with the record; --rebuild writes results.tsv from the record, --test validates the
archived baseline and bests on the held-out test split."""

import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from harness import night, record
from harness.common import CACHE_DIR

RESULTS_COLUMNS = ["commit", "metric", "memory_gb", "status", "description"]
STATUSES = ("keep", "discard", "crash")
RERUN = "re-run"         # a fourth outcome: a repeat of a train.py already measured, a sample of the noise
PROGRAM_MD_FLOOR = 0.005  # program.md's noise floor, which stands until this machine has re-runs
METRIC_TOLERANCE = 5e-7  # results.tsv rounds the metric to 6 decimals
SHORT_COMMIT = 7         # results.tsv's commit: the first 7 characters of the record's
MIN_COMMIT_PREFIX = 4    # git's shortest abbreviation: a shorter commit in results.tsv matches no run
CRASH_CHARS = 60         # a rebuilt crash row's description: the error's first characters
HELD_OUT_DIR = CACHE_DIR / "held-out"  # the test split's YAML and Ultralytics' val folder, outside run/
LAST_KEPT_SHOWN = 5      # how many recent kept changes the summary lists
LABEL_MAX_CHARS = 30     # plot annotations get truncated to this
LABEL_ANGLE = 60         # degrees
LABEL_SLOTS = 35         # at most this many labels across the x axis
PLOT_SIZE_INCHES = (10, 5)
PLOT_DPI = 120

@dataclass
class Row:
    n: int               # experiment number, 1-based in file order
    commit: str
    metric: float        # mAP50-95, 0.0 for crashes
    memory_gb: float
    status: str          # keep | discard | crash
    description: str
    rerun: bool = False  # a repeat of a train.py already measured (mark_reruns)


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


def outcome(row):
    """keep, discard, crash or re-run: a re-run that measured something is counted apart from the changes,
    a crashed one is a crash."""
    return RERUN if row.rerun and row.status != "crash" else row.status


def baseline_and_best(rows):
    """Baseline = first successful run; best = highest kept run (or any successful run)."""
    ran = [r for r in rows if r.status != "crash"]
    if not ran:
        return None, None
    kept = [r for r in ran if outcome(r) == "keep"]
    best = max(kept or ran, key=lambda r: r.metric)
    return ran[0], best


def summarize_results(rows):
    """A few plain-text lines an agent can read to decide what to try next."""
    if not rows:
        return "no experiments yet"
    counts = {s: sum(outcome(r) == s for r in rows) for s in (*STATUSES, RERUN)}
    reruns = f", {counts[RERUN]} {RERUN}" if counts[RERUN] else ""
    lines = [f"runs: {len(rows)} total, {counts['keep']} keep, "
             f"{counts['discard']} discard, {counts['crash']} crash{reruns}"]
    baseline, best = baseline_and_best(rows)
    if baseline is None:
        lines.append("no successful runs yet: every run crashed (check run.log)")
        return "\n".join(lines)
    lines.append(f"baseline: {baseline.metric:.6f}  {baseline.commit}  {baseline.description}")
    lines.append(f"best:     {best.metric:.6f}  {best.commit}  {best.description}")
    gain = best.metric - baseline.metric
    relative = f" ({gain / baseline.metric * 100:+.1f}%)" if baseline.metric > 0 else ""
    lines.append(f"gain:     {gain:+.6f}{relative} over baseline")
    kept = [r for r in rows if outcome(r) == "keep"][-LAST_KEPT_SHOWN:]
    if kept:
        lines.append(f"last {len(kept)} kept:")
        lines += [f"  #{r.n:<3} {r.commit}  {r.metric:.6f}  {r.description}" for r in kept]
    return "\n".join(lines)


def running_best_steps(rows):
    """x, y of the running best over kept runs, held flat up to the last experiment."""
    xs, ys, best = [], [], -math.inf
    for r in rows:
        if outcome(r) == "keep" and r.metric > best:
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


def plot_progress(rows, out_path, held_out=()):
    """Write a progress.png in the spirit of karpathy/autoresearch; held_out: (experiment #, test mAP50-95)
    of the archived runs (--test), drawn as a second series. Returns the figure."""
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
        return fig

    kept = [r for r in rows if outcome(r) == "keep"]
    discarded = [r for r in rows if outcome(r) == "discard"]
    crashed = [r for r in rows if outcome(r) == "crash"]
    reruns = [r for r in rows if outcome(r) == RERUN]
    baseline, best = baseline_and_best(rows)

    if discarded:
        ax.scatter([r.n for r in discarded], [r.metric for r in discarded],
                   s=18, color="grey", alpha=0.45, label="discard", zorder=2)
    if reruns:
        ax.scatter([r.n for r in reruns], [r.metric for r in reruns], s=30, facecolor="none",
                   edgecolor="tab:purple", lw=1, label=RERUN, zorder=2)
    if held_out:
        ax.plot(*zip(*held_out), marker="D", ms=5, color="tab:orange", lw=1, ls=":",
                label="test (held out)", zorder=4)
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
        metrics = [r.metric for r in rows if r.status != "crash"] + [m for _, m in held_out]
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
    counts += f", {len(reruns)} {RERUN}" if reruns else ""
    best_text = f", best {best.metric:.4f} ({best.commit})" if best else ""
    ax.set_title(f"autoresearch progress: {counts}{best_text}")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    fig.savefig(out_path)
    return fig


# ---------------------------------------------------------------------------
# The run record beside results.tsv: re-runs, the noise floor, rows that disagree
# ---------------------------------------------------------------------------


def fitness_of(line):
    """A record line's fitness as a float; None for a run that ended in an error."""
    return float(line["summary"]["fitness"]) if line.get("summary") else None


def experiment(line):
    """What makes two runs repeats of one experiment: the same train.py on the same dataset."""
    return line.get("train_py"), line.get("dataset")


def reruns_of(lines):
    """{record line number: line number of the first successful run of the same train.py on the same
    dataset} for each line that repeats an experiment already measured (numbers 1-based, as
    record/best/NNNN.pt). A repeat of a crash is no re-run, unlike the record's `repeat`: the crash measured
    nothing."""
    first, reruns = {}, {}
    for i, line in enumerate(lines, start=1):
        digest = experiment(line)
        if digest in first:
            reruns[i] = first[digest]
        elif fitness_of(line) is not None:
            first[digest] = i
    return reruns


def repeated_runs(lines):
    """{experiment: [fitness of each successful run]} of the train.py's that ran twice or more on one
    dataset: runs of two datasets are never paired."""
    runs = {}
    for line in lines:
        if (fitness := fitness_of(line)) is not None:
            runs.setdefault(experiment(line), []).append(fitness)
    return {digest: f for digest, f in runs.items() if len(f) > 1}


def noise_floor(lines):
    """(floor or None, pairs, groups): the floor is the largest |fitness difference| over every pair of
    successful runs of one train.py (the same digest); groups: how many train.py's ran twice or more."""
    repeated = repeated_runs(lines).values()
    if not repeated:
        return None, 0, 0
    pairs = sum(len(f) * (len(f) - 1) // 2 for f in repeated)
    return max(max(f) - min(f) for f in repeated), pairs, len(repeated)


def noise_floor_line(lines, record_path):
    """The summary's line on this machine's noise floor."""
    floor, pairs, groups = noise_floor(lines)
    if floor is None:
        return (f"noise floor: none measured yet (no train.py has run twice without an error in "
                f"{record_path}); program.md's {PROGRAM_MD_FLOOR} stands")
    counts = sorted(len(f) for f in repeated_runs(lines).values())
    times = f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
    verdict = (f"above program.md's {PROGRAM_MD_FLOOR}: count a gain only past it" if floor > PROGRAM_MD_FLOOR
               else f"program.md's {PROGRAM_MD_FLOOR} stands")
    files = "1 train.py" if groups == 1 else f"{groups} train.py's"
    return (f"noise floor: {floor:.6f}, the largest difference between two runs of one train.py ({pairs} "
            f"pair{'s' * (pairs != 1)}: {files} run {times} times); {verdict}")


def short_commit(line):
    """A record line's commit as results.tsv writes it ('none' outside a git checkout)."""
    return (line.get("commit") or "none")[:SHORT_COMMIT]


def runs_of_commit(lines, commit):
    """Record line numbers (oldest first) whose full commit starts with a results.tsv row's commit."""
    short = commit.lower()
    if len(short) < MIN_COMMIT_PREFIX:
        return []
    return [i for i, line in enumerate(lines, start=1) if str(line.get("commit") or "").startswith(short)]


def match_record(rows, lines):
    """{row number: record line number}. The rule: a row names its run by a short commit, a prefix of the
    record's full commit; the k-th row of a commit, in file order, is the k-th record line of that commit,
    oldest first. A row past its commit's record lines, or of a commit the record lacks, matches none."""
    seen, matched = {}, {}
    for r in rows:
        k = seen[r.commit.lower()] = seen.get(r.commit.lower(), 0) + 1
        runs = runs_of_commit(lines, r.commit)
        if k <= len(runs):
            matched[r.n] = runs[k - 1]
    return matched


def mark_reruns(rows, lines, matched):
    """The rows with rerun set: from the record where a line matches the row (reruns_of), else from a
    description that starts with `re-run`."""
    reruns = reruns_of(lines)
    return [replace(r, rerun=matched[r.n] in reruns if r.n in matched
                    else r.description.lower().startswith(RERUN)) for r in rows]


def disagreements(rows, lines, matched, path, record_path):
    """One warning per way a row disagrees with its run in the record (status, metric, a missing run,
    train.py edits that no commit holds)."""
    warnings = []
    for r in rows:
        where = f"{path} row {r.n} ({r.commit})"
        if r.n not in matched:
            recorded = len(runs_of_commit(lines, r.commit))
            missing = (f"more rows of this commit than its {recorded} run(s) in {record_path}" if recorded
                       else f"no run of this commit in {record_path}")
            warnings.append(f"{where}: {missing}; log one row per `uv run train.py`, with the commit it ran")
            continue
        i = matched[r.n]
        line, at = lines[i - 1], f"{record_path} line {i}"
        fitness = fitness_of(line)
        if r.status != "crash" and fitness is None:
            warnings.append(f"{where}: status {r.status}, but the run ended in an error ({at}: "
                            f"{str(line.get('error'))[:CRASH_CHARS]}); log it as crash, metric 0.000000")
        elif r.status == "crash" and fitness is not None:
            warnings.append(f"{where}: status crash, but the run finished with fitness {fitness:.6f} ({at}); "
                            "log its metric and keep or discard it")
        elif fitness is not None and abs(r.metric - fitness) > METRIC_TOLERANCE:
            warnings.append(f"{where}: metric {r.metric:.6f}, but the run's fitness is {fitness:.6f} ({at}); "
                            "copy the summary's `fitness:` line")
        if line.get("train_py_changed"):
            warnings.append(f"{where}: ran with uncommitted edits to train.py ({at}), so the commit does not "
                            "hold what ran; commit before each run")
    return warnings


def night_warnings(lines, record_path):
    """One warning per record line whose dataset or read-only files differ from the night's baseline's, and
    per commit since the baseline that changed read-only files (harness/night.py)."""
    warnings = []
    n_data, data = night.baseline(lines, "dataset")
    n_contract, contract = night.baseline(lines, "contract")
    for i, line in enumerate(lines, start=1):
        where = f"{record_path} line {i} ({short_commit(line)})"
        if data and line.get("dataset") and line["dataset"] != data["dataset"]:
            warnings.append(f"{where}: another dataset than the night's baseline's (line {n_data}); its runs "
                            "are not compared with the night's")
        if contract and line.get("contract") and (
                changed := night.contract_changes(contract["contract"], line["contract"])):
            warnings.append(f"{where}: read-only files differ from the night's baseline's (line "
                            f"{n_contract}): {night.named(changed)}")
    for commit in night.contract_commits(contract.get("commit") if contract else None):
        warnings.append(f"commit {commit}: changed read-only files after the night's baseline")
    return warnings

# ---------------------------------------------------------------------------
# --rebuild: results.tsv from the record
# ---------------------------------------------------------------------------


def rebuilt_rows(lines):
    """results.tsv's 5 fields (strings) for each record line: crash for an error, keep for a line that
    beats every earlier fitness, discard otherwise; described by its changed knobs, `baseline` (the first
    run), `re-run of <commit>` or its error."""
    reruns, rows = reruns_of(lines), []
    first_success = next((i for i, line in enumerate(lines, 1) if fitness_of(line) is not None), None)
    for i, line in enumerate(lines, start=1):
        if fitness_of(line) is None:
            error = " ".join(str(line.get("error") or "no summary, no error").split())
            rows.append([short_commit(line), "0.000000", "0.0", "crash", error[:CRASH_CHARS]])
            continue
        knobs = " ".join(f"{k}={v}" for k, v in (line.get("changed") or {}).items())
        if i in reruns:
            description = f"{RERUN} of {short_commit(lines[reruns[i] - 1])}"
        elif i == first_success:  # after crashes its knobs may differ from the first line's
            description = f"baseline {knobs}"
        else:
            description = knobs or "train.py edited, no knob changed"
        memory = float(line["summary"].get("peak_vram_mb", 0)) / 1024
        status = "keep" if record.is_new_best(line, lines[:i - 1]) else "discard"
        rows.append([short_commit(line), f"{fitness_of(line):.6f}", f"{memory:.1f}", status,
                     " ".join(description.split())])  # no tab or newline of a knob's value splits the row
    return rows


def rebuild_results(lines, path, record_path):
    """Write results.tsv at path from the record, never over an existing file. Returns an exit code."""
    if Path(path).exists():
        print(f"error: {path} exists and --rebuild never overwrites it; move it away "
              f"(mv {path} {path}.old) or pass --results rebuilt.tsv", file=sys.stderr)
        return 1
    if not lines:
        print(f"error: {record_path}: no runs recorded, nothing to rebuild from; each `uv run train.py` "
              "adds one", file=sys.stderr)
        return 1
    text = "".join("\t".join(fields) + "\n" for fields in [RESULTS_COLUMNS, *rebuilt_rows(lines)])
    Path(path).write_text(text, encoding="utf-8")
    print(f"wrote {path}: {len(lines)} rows from {record_path}")
    return 0

# ---------------------------------------------------------------------------
# --test: the archived baseline and bests on the held-out test split
# ---------------------------------------------------------------------------


def validate_on_test(weights, stats):
    """[test mAP50-95] of each weights file: the metric's validator and settings (prepare.validate_best),
    on the test split instead of val."""
    from harness import dataset, device, runtime, validation
    runtime.go_offline()  # before Ultralytics is imported, as prepare.py does
    runtime.configure_ultralytics()
    gpu, folder = device.pick_device(None)[0], HELD_OUT_DIR / str(os.getpid())
    if view := dataset.link_view(stats["test"].folder, folder / "test"):  # not taken for a run's reads
        stats = {**stats, "test": stats["test"]._replace(folder=view)}
    data = dataset.write_run_yaml(stats, folder / "data.yaml")
    settings = dict(data=str(data), split="test", device=gpu, single_cls=False, plots=False,
                    project=str(folder), name="val", exist_ok=True)
    try:
        return [float(validation.validate(str(w), **settings).box.map) for w in weights]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def held_out_table(lines, tested):
    """The --test table: per archived run its record line, commit, val and test mAP50-95, and the gains of
    both over the first row (the baseline, unless its weights are gone)."""
    first_val, first_test = fitness_of(lines[tested[0][0] - 1]), tested[0][1]
    reruns = reruns_of(lines)  # a re-run's gains are noise: the table says which lines are
    table = [f"{'line':>4}  {'commit':<7}  {'val mAP50-95':>12}  {'test mAP50-95':>13}  {'val gain':>9}  "
             f"{'test gain':>9}"]
    for n, (i, test_map) in enumerate(tested):
        line = lines[i - 1]
        gains = ("baseline", "baseline") if n == 0 else (f"{fitness_of(line) - first_val:+.6f}",
                                                         f"{test_map - first_test:+.6f}")
        note = f"  {RERUN} of line {reruns[i]}" if i in reruns else ""
        table.append(f"{i:>4}  {short_commit(line):<7}  {fitness_of(line):>12.6f}  {test_map:>13.6f}  "
                     f"{gains[0]:>9}  {gains[1]:>9}{note}")
    return table


def held_out(lines, record_path):
    """Validate the archived weights still on disk on the dataset's test split and print the table.
    Returns [(record line number, test mAP50-95)]: [] without weights or without a test split."""
    from harness import dataset
    archived = [i for i, line in enumerate(lines, start=1) if line.get("weights")]
    on_disk = [i for i in archived if record.weights_path(lines[i - 1], record_path).is_file()]
    if not on_disk:
        print(f"held-out check: the {len(archived)} archived weights that {record_path} names are gone from "
              "disk; nothing to validate" if archived else f"held-out check: no archived weights in "
              f"{record_path} yet (the first successful run archives the baseline's); nothing to validate")
        return []
    yaml_path, _ = dataset.find_dataset()
    stats = dataset.check_dataset(yaml_path)
    if "test" not in stats:
        print(f"held-out check: {yaml_path} has no test split (no `test:` entry, or no images there); "
              "nothing held out to validate on")
        return []
    print(f"held-out check: {len(on_disk)} archived run(s) on the test split of {yaml_path} "
          f"({stats['test'].images} images), validated as the metric is on val")
    weights = [record.weights_path(lines[i - 1], record_path) for i in on_disk]
    tested = list(zip(on_disk, validate_on_test(weights, stats)))
    baseline = "the baseline" if on_disk[0] == archived[0] else "the earliest archived weights left"
    print(f"held-out check: the archived runs, gains over {baseline}")
    print("\n".join(held_out_table(lines, tested)))
    return tested

# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------


def progress(path="results.tsv", out_path="progress.png", record_path=None, test=False, rebuild=False):
    """CLI entry: print warnings, a summary and (with a record) the noise floor, write the plot. rebuild:
    first write results.tsv at path from the record; test: validate the archived runs on the test split
    too. Returns an exit code."""
    record_path = Path(record_path or record.RECORD)
    lines = record.read_record(record_path)
    if rebuild and (code := rebuild_results(lines, path, record_path)):
        return code
    if not Path(path).is_file():
        hint = (f"; {record_path} holds {len(lines)} run(s): `uv run prepare.py progress --rebuild` writes "
                "it from them" if lines else "")
        print(f"error: {path} not found — run an experiment first (see program.md){hint}",
              file=sys.stderr)
        return 1
    rows, warnings = read_results(path)
    matched = match_record(rows, lines)
    rows = mark_reruns(rows, lines, matched)
    if lines:
        warnings += disagreements(rows, lines, matched, path, record_path)
        warnings += night_warnings(lines, record_path)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(summarize_results(rows))
    if record_path.is_file():
        print(noise_floor_line(lines, record_path))
    row_of_line = {i: n for n, i in matched.items()}
    tested = held_out(lines, record_path) if test else []
    plot_progress(rows, out_path, [(row_of_line[i], m) for i, m in tested if i in row_of_line])
    print(f"wrote {out_path}")
    return 0
