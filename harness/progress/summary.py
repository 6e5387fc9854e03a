"""The text summary of results.tsv: counts, baseline, best, gain and the last kept changes, a few lines an
agent reads to decide what to try next."""

from harness.progress.results import RERUN, STATUSES, baseline_and_best, outcome

LAST_KEPT_SHOWN = 5      # how many recent kept changes the summary lists


def summarize_results(rows):
    """A few plain-text lines (one string) of the rows."""
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
