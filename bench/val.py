"""
Validation seconds: the supervisor's validation of one checkpoint (Ultralytics' validator, default settings)
through Ultralytics' own DataLoader and through prebuilt batches (harness/validation.py), at each image size
asked for, with every metric of the two compared.

Usage (repo root, GPU machine, after a run left run/weights/best.pt and run/data.yaml):
    python bench/val.py                                  # the checkpoint's image size, 2 passes each
    python bench/val.py --imgsz 640 1280 --repeat 2 --weights run/weights/best.pt --data run/data.yaml

Prints the card, one row per loader, image size and pass (seconds, mAP50-95), then per image size the largest
difference between the two loaders' metrics; the passes alternate loaders, so both see a warm page cache.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from report import Row, lines

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from harness import runtime, validation  # noqa: E402

LOADERS = ("ultralytics", "prebuilt")


def validate_once(weights, data, loader, imgsz, device):
    """(seconds, Ultralytics' results_dict) of one validation through `loader`."""
    os.environ[validation.LOADER_ENV] = loader
    size = {"imgsz": imgsz} if imgsz else {}
    t = time.time()
    metrics = validation.validate(weights, data=data, split="val", device=device, single_cls=False,
                                  plots=False, project=tempfile.mkdtemp(), name="val", **size)
    return time.time() - t, metrics.results_dict


def val_rows(weights, data, sizes, repeat, device):
    """Rows: the card, then (seconds; mAP50-95) per image size, pass and loader, then per size the largest
    difference between the two loaders' metrics."""
    import torch
    rows = [Row("card", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")]
    worst = {}
    for imgsz in sizes:
        results = {}
        for r in range(repeat):
            for loader in LOADERS:
                seconds, metrics = validate_once(weights, data, loader, imgsz, device)
                results.setdefault(loader, []).append(metrics)
                rows.append(Row(f"val {imgsz or 'ckpt'} px, {loader}, pass {r + 1} (s; mAP50-95)",
                                f"{seconds:.2f}; {metrics['metrics/mAP50-95(B)']:.6f}"))
        worst[imgsz] = max(abs(a[k] - b[k]) for a in results["prebuilt"] for b in results["ultralytics"]
                           for k in b)
    return rows + [Row(f"val {imgsz or 'ckpt'} px: largest metric difference", f"{diff:.2e}")
                   for imgsz, diff in worst.items()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=str(REPO / "run" / "weights" / "best.pt"))
    parser.add_argument("--data", default=str(REPO / "run" / "data.yaml"))
    parser.add_argument("--imgsz", type=int, nargs="*", default=[0], help="image sizes (0: the checkpoint's)")
    parser.add_argument("--repeat", type=int, default=2, help="passes per loader and size")
    parser.add_argument("--device", default="0")
    args = parser.parse_args(argv)
    runtime.go_offline()
    runtime.configure_ultralytics()
    rows = val_rows(args.weights, args.data, args.imgsz, args.repeat, args.device)
    print("\n" + "\n".join(lines(rows)))


if __name__ == "__main__":
    main()
