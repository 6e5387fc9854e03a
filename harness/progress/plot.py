"""progress.png in the spirit of karpathy/autoresearch: the running best over kept runs with their labels, the
discards, re-runs and crashes, the baseline, and the held-out test mAP50-95 of the last --test."""

import math

from harness.progress.results import RERUN, baseline_and_best, outcome

LABEL_MAX_CHARS = 30     # plot annotations get truncated to this
LABEL_ANGLE = 60         # degrees
LABEL_SLOTS = 35         # at most this many labels across the x axis
LABEL_FIT_PASSES = 3     # tight_layout moves the axes a little after each stretch: measure again
PLOT_SIZE_INCHES = (10, 5)
PLOT_DPI = 120


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
    """text, cut to limit characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def stretched_high(low, high, anchors, ends, size):
    """The axis's new upper limit that brings every label's far end (ends, pixels from the axis's start)
    inside size pixels, its anchor (anchors, pixels) moving with the data and the label's length fixed."""
    scale = min([(size - (end - at)) / at for at, end in zip(anchors, ends) if end > size and at > 0],
                default=1.0)
    return low + (high - low) / max(scale, 0.1)  # a label longer than the axes stays as short as it can


def fit_labels(fig, ax, labels):
    """Raise the y axis's top and widen the x axis's right end until each label lies inside the axes."""
    for _ in range(LABEL_FIT_PASSES):
        fig.tight_layout()
        renderer = fig.canvas.get_renderer()
        box = ax.get_window_extent(renderer)
        extents = [t.get_window_extent(renderer) for t in labels]
        anchors = [ax.transData.transform(t.xy) for t in labels]
        if all(e.y1 <= box.y1 and e.x1 <= box.x1 for e in extents):
            return
        ax.set_ylim(ax.get_ylim()[0], stretched_high(*ax.get_ylim(), [a[1] - box.y0 for a in anchors],
                                                      [e.y1 - box.y0 for e in extents], box.height))
        ax.set_xlim(ax.get_xlim()[0], stretched_high(*ax.get_xlim(), [a[0] - box.x0 for a in anchors],
                                                      [e.x1 - box.x0 for e in extents], box.width))


def plot_progress(rows, out_path, held_out=()):
    """Write progress.png; held_out: (experiment #, test mAP50-95) of the archived runs (--test), drawn as a
    second series. Returns the figure."""
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
    labels = []

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
            labels.append(ax.annotate(shorten(r.description), (r.n, r.metric), xytext=(2, 5),
                                      textcoords="offset points", fontsize=7, rotation=LABEL_ANGLE,
                                      rotation_mode="anchor", color="darkgreen", ha="left", va="center"))
    if baseline is not None:
        ax.axhline(baseline.metric, color="tab:blue", ls="--", lw=1, alpha=0.7,
                   label=f"baseline {baseline.metric:.4f}")
        metrics = [r.metric for r in rows if r.status != "crash"] + [m for _, m in held_out]
        low, high = min(metrics), max(metrics)
        pad = max(high - low, 0.01)
        ax.set_ylim(low - 0.1 * pad, high + 0.1 * pad)  # fit_labels adds the labels' headroom
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
    fit_labels(fig, ax, labels)
    fig.savefig(out_path)
    return fig
