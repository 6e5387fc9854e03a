"""The noise floor of this machine from the record's re-runs: the largest fitness difference between two runs
of one experiment (record.experiment: one train.py, one dataset, one kind of card), never across cards."""

from harness import record
from harness.progress.reconcile import fitness_of

PROGRAM_MD_FLOOR = 0.005  # program.md's noise floor, which stands until this machine has re-runs
UNNAMED_CARD = "a card the summary does not name"  # a record written before the summary had `device`


def repeated_runs(lines):
    """{experiment: [fitness of each successful run]} of the experiments that ran twice or more: runs of two
    datasets or two kinds of card are never paired."""
    runs = {}
    for line in lines:
        if (fitness := fitness_of(line)) is not None:
            runs.setdefault(record.experiment(line), []).append(fitness)
    return {key: f for key, f in runs.items() if len(f) > 1}


def noise_floor(lines):
    """(floor or None, pairs, groups): the floor is the largest |fitness difference| over every pair of
    successful runs of one experiment; groups: how many experiments ran twice or more."""
    repeated = repeated_runs(lines).values()
    if not repeated:
        return None, 0, 0
    pairs = sum(len(f) * (len(f) - 1) // 2 for f in repeated)
    return max(max(f) - min(f) for f in repeated), pairs, len(repeated)


def noise_floor_line(lines, record_path):
    """The summary's line on this machine's noise floor, naming the card(s) it rests on."""
    floor, pairs, groups = noise_floor(lines)
    if floor is None:
        return (f"noise floor: none measured yet (no train.py has run twice without an error on one kind of "
                f"card in {record_path}); program.md's {PROGRAM_MD_FLOOR} stands")
    repeated = repeated_runs(lines)
    counts = sorted(len(f) for f in repeated.values())
    times = f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
    cards = " and ".join(sorted({card or UNNAMED_CARD for _, _, card in repeated}))
    verdict = (f"above program.md's {PROGRAM_MD_FLOOR}: count a gain only past it" if floor > PROGRAM_MD_FLOOR
               else f"program.md's {PROGRAM_MD_FLOOR} stands")
    files = "1 train.py" if groups == 1 else f"{groups} train.py's"
    return (f"noise floor: {floor:.6f}, the largest difference between two runs of one train.py on one kind "
            f"of card ({pairs} pair{'s' * (pairs != 1)}: {files} run {times} times, on {cards}); {verdict}")
