"""prepare.py's commands (its docstring lists them): check the dataset, generate the stand-in, fetch weights,
plot the night's progress (with --rebuild and --test: harness/progress/), start a new night, and the
experiment queue on Ray (submit, wait, list, cancel, stop-ray: harness/queue.py)."""

import argparse
import os
import sys
from pathlib import Path

from harness.common import HarnessError
from harness.dataset import check_dataset, dataset_line, find_dataset

QUEUE_COMMANDS = ("submit", "wait", "list", "cancel", "stop-ray")


def main(argv=None):
    """Run one command; returns the exit code."""
    from harness import night, progress, record, synthetic
    from harness.device import download_weights
    parser = argparse.ArgumentParser(description="Dataset prep and checks for autoresearch on ships.")
    parser.add_argument("command", nargs="?", default="check",
                        choices=["check", "progress", "night", *QUEUE_COMMANDS])
    parser.add_argument("target", nargs="?", help="submit: a commit (HEAD by default); cancel: an experiment")
    parser.add_argument("--synthetic", choices=sorted(synthetic.SYNTH_SCALES),
                        help="generate the stand-in at this scale")
    parser.add_argument("--weights", metavar="NAME.pt", help="download Ultralytics weights into weights/")
    parser.add_argument("--results", default="results.tsv", help="progress: the results file to read")
    parser.add_argument("--record", type=Path, default=record.RECORD, metavar="PATH",
                        help="progress: the run record the supervisor appends to")
    parser.add_argument("--rebuild", action="store_true",
                        help="progress: write --results from the run record first (never over a file)")
    parser.add_argument("--test", action="store_true",
                        help="progress: validate the archived baseline and bests on the test split")
    args = parser.parse_args(argv)
    if args.command == "night":
        moved = night.start_new_night(args.record, record.read_record(args.record))
        print(f"a new night: the next run is its baseline; the last night's record is in {moved}, readable "
              f"with `uv run prepare.py progress --record {moved / args.record.name}`" if moved else
              f"a new night: {args.record} holds no run yet, so the next run is the night's baseline")
        return 0
    if args.command in QUEUE_COMMANDS:
        return queue_command(args.command, args.target)
    if args.command == "progress":
        return progress.progress(args.results, "progress.png", args.record, test=args.test,
                                 rebuild=args.rebuild)
    if args.weights:
        download_weights(args.weights)
        return 0
    if args.synthetic:
        yaml_path, kind = synthetic.make_synthetic(args.synthetic), "synthetic"
    else:
        yaml_path, kind = find_dataset()
    print(dataset_line(yaml_path, kind, check_dataset(yaml_path)))
    return 0


def queue_command(command, target):
    """One of the queue's commands, its `error:` line printed as any other's; ends the process at once, as
    Ray's shutdown at exit takes most of a second and the experiments live on in Ray without it."""
    try:
        code = run_queue_command(command, target)
    except HarnessError as e:
        sys.excepthook(type(e), e, e.__traceback__)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_queue_command(command, target):
    """One of the queue's commands (harness/queue.py); returns the exit code."""
    from harness import queue
    if command == "submit":
        print(f"experiment: {queue.submit(target or 'HEAD')}")
    elif command == "wait":
        return queue.wait()
    elif command == "list":
        for e in queue.entries():
            print(f"{e.id}  {e.commit}  {e.state:8}  {e.node or '-'}  gpus {e.gpus or '-'}  {e.end}".rstrip())
    elif command == "cancel":
        if not target:
            raise HarnessError("cancel needs an experiment id: uv run prepare.py cancel ID (list shows them)")
        queue.cancel(target)
        print(f"cancelled: {target}")
    elif queue.os.environ.get("RAY_ADDRESS"):
        raise HarnessError("stop-ray stops the local Ray head only; stop a cluster with its own tools")
    else:
        pid = queue.stop_local_head()
        print(f"stopped the local Ray head (pid {pid})" if pid else "no local Ray head was running")
    return 0
