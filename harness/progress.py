"""Watching the night: results.tsv -> a few lines of text and progress.png (`uv run prepare.py progress`)."""

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

RESULTS_COLUMNS = ["commit", "metric", "memory_gb", "status", "description"]
STATUSES = ("keep", "discard", "crash")
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
