"""
Model-only throughput ceiling: how many images per second train.py's model could train at if data
cost nothing. Forward, loss, backward and the optimizer step (Ultralytics' own optimizer, gradient
clipping, GradScaler and EMA update) on synthetic batches that are already on the device, with
train.py's MODEL, IMGSZ, BATCH, NBS, OPTIMIZER and AMP, in each memory layout. Training throughput
divided by the best of these is the share of the GPU that the data pipeline and the loop leave us.

Usage (repo root):
    python bench/ceiling.py --out ceiling.json              # train.py's knobs, CUDA if present
    python bench/ceiling.py --compile --out ceiling.json    # also torch.compile (about 2 min)
    python bench/ceiling.py --train /tmp/variant/train.py   # another train.py's knobs
    python bench/ceiling.py --imgsz 64 --batch 4 --nbs 4 --iters 2 --warmup 1  # tiny, on CPU (tests)

Prints one line per layout and writes a JSON: the knobs used, the card, and per layout img/s,
ms per batch and peak memory. Nothing is downloaded: a .pt MODEL is timed as its .yaml architecture.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import prepare  # noqa: E402, I001  first: YOLO_OFFLINE=1, YOLO_AUTOINSTALL=0, our settings folder
from harness.record import knobs_of  # noqa: E402

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

WARMUP_ITERS = 15       # cuDNN algorithm picks, allocator growth, lazy loss init: not timed
TIMED_ITERS = 200       # batches timed per layout (rounded up to whole accumulation cycles): 60 left
                        # layouts that run the same kernels 3 to 8% apart
BOXES_PER_IMAGE = 12    # mean ships per training image (a mosaic of 4 images holds a dozen or so);
                        # the loss's target assigner scales with the most boxes in any image
# contiguous: NCHW everywhere; channels_last: model and images NHWC (GPU_DATA = True); channels_last_model:
# model NHWC as Ultralytics' trainer sets it on CUDA, images NCHW as its CPU loader gives them;
# compile: NHWC and torch.compile (only with --compile)
LAYOUTS = ("contiguous", "channels_last", "channels_last_model")
DEFAULTS = {"MODEL": "yolo11n.pt", "IMGSZ": 640, "BATCH": 16, "NBS": 64, "AMP": True,
            "OPTIMIZER": "SGD", "LR0": 0.01, "MOMENTUM": 0.937, "WEIGHT_DECAY": 0.0005,
            "DETERMINISTIC": True, "SEED": 0}  # Ultralytics' defaults where train.py has no knob

# ---------------------------------------------------------------------------
# train.py's knobs
# ---------------------------------------------------------------------------


def settings(args):
    """What to time: train.py's knobs (read as the run record reads them, no import: it would train), then any
    command-line overrides."""
    knobs = {**DEFAULTS, **knobs_of(Path(args.train).read_text())}
    for key in ("imgsz", "batch", "nbs", "model"):
        if getattr(args, key) is not None:
            knobs[key.upper()] = getattr(args, key)
    if not isinstance(knobs["BATCH"], int) or knobs["BATCH"] < 1:  # -1 or 0.7: AutoBatch decides
        print(f"BATCH = {knobs['BATCH']!r} is AutoBatch's; timing batch 16 (pass --batch)")
        knobs["BATCH"] = 16
    if args.deterministic is not None:
        knobs["DETERMINISTIC"] = bool(args.deterministic)
    return knobs


def architecture(model_name):
    """The YAML to build: a .pt MODEL times as its architecture (weights do not change the speed)."""
    weights, note = prepare.resolve_weights(model_name)
    if weights.endswith(".pt"):
        from ultralytics.nn.tasks import load_checkpoint
        return load_checkpoint(weights)[0].yaml, note
    return weights, note

# ---------------------------------------------------------------------------
# One training step, as Ultralytics' trainer does it
# ---------------------------------------------------------------------------


def build(knobs, cfg, device, layout):
    """Model, optimizer, scaler and EMA in a namespace that BaseTrainer.optimizer_step accepts."""
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import ModelEMA, attempt_compile, init_seeds

    # same determinism as the trainer (deterministic=True by default makes cuDNN pick fixed kernels)
    init_seeds(knobs["SEED"] + 1, deterministic=knobs["DETERMINISTIC"])
    model = DetectionModel(cfg, nc=1, verbose=False).to(device)
    model.args = get_cfg(overrides={"imgsz": knobs["IMGSZ"], "batch": knobs["BATCH"]})  # loss gains
    if layout != "contiguous":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    accumulate = max(round(knobs["NBS"] / knobs["BATCH"]), 1)
    decay = knobs["WEIGHT_DECAY"] * knobs["BATCH"] * accumulate / knobs["NBS"]
    fake_trainer = SimpleNamespace(args=model.args, data={"nc": 1})  # build_optimizer reads these only
    optimizer = DetectionTrainer.build_optimizer(fake_trainer, model, name=knobs["OPTIMIZER"],
                                                 lr=knobs["LR0"], momentum=knobs["MOMENTUM"], decay=decay)
    amp = device.type == "cuda" and knobs["AMP"] not in (False, "fp32")
    bf16 = knobs["AMP"] == "bf16"
    state = SimpleNamespace(
        model=model, device=device, optimizer=optimizer, ema=ModelEMA(model),
        scaler=torch.amp.GradScaler("cuda", enabled=amp and not bf16),
        autocast_dtype=torch.bfloat16 if bf16 else torch.float16, amp=amp, accumulate=accumulate,
        forward=attempt_compile(model, device=device, mode=True) if layout == "compile" else None,
    )
    state.optimizer_step = lambda: BaseTrainer.optimizer_step(state)
    return state


def synthetic_batch(knobs, device, layout):
    """A batch in the dict format DetectionTrainer.preprocess_batch hands the model: images in [0, 1],
    one row per box with its image index, class 0 and a normalized xywh box."""
    import torch
    b, s = knobs["BATCH"], knobs["IMGSZ"]
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 2 * BOXES_PER_IMAGE, (b,), generator=g)
    n = int(counts.sum())
    wh = torch.rand(n, 2, generator=g) * 0.2 + 0.01
    xy = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)
    img = torch.rand(b, 3, s, s, generator=g)
    if layout in ("channels_last", "compile"):
        img = img.contiguous(memory_format=torch.channels_last)
    batch = {"img": img, "batch_idx": torch.repeat_interleave(torch.arange(b), counts).float(),
             "cls": torch.zeros(n, 1), "bboxes": torch.cat([xy, wh], 1)}
    return {k: v.to(device) for k, v in batch.items()}


def train_step(state, batch, i):
    """trainer._do_train's forward, loss and backward, and an optimizer step every `accumulate` batches."""
    import torch
    with torch.autocast(state.device.type, dtype=state.autocast_dtype, enabled=state.amp):
        if state.forward is not None:  # compiled: the trainer separates the forward from the loss
            loss, _ = state.model.loss(batch, state.forward(batch["img"]))
        else:
            loss, _ = state.model(batch)
        loss = loss.sum()
    state.scaler.scale(loss).backward()
    if (i + 1) % state.accumulate == 0:
        state.optimizer_step()


def sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_layout(knobs, cfg, device, layout, warmup, iters):
    """Images per second of train_step in one layout, after warm-up."""
    import torch
    state = build(knobs, cfg, device, layout)
    batch = synthetic_batch(knobs, device, layout)
    iters = -(-iters // state.accumulate) * state.accumulate  # whole accumulation cycles
    t = time.perf_counter()
    for i in range(warmup):
        train_step(state, batch, i)
    sync(device)
    warmup_s = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for i in range(iters):
        train_step(state, batch, i)
    sync(device)
    seconds = time.perf_counter() - t
    peak_mb = torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else 0.0
    del state, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"img_per_s": round(iters * knobs["BATCH"] / seconds, 1),
            "ms_per_batch": round(1000 * seconds / iters, 2), "iters": iters,
            "warmup_s": round(warmup_s, 1), "peak_reserved_mb": round(peak_mb, 1)}

# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", default=str(REPO / "train.py"), help="the train.py whose knobs to use")
    parser.add_argument("--out", default="ceiling.json", help="where to write the JSON")
    parser.add_argument("--model", help="override MODEL")
    parser.add_argument("--imgsz", type=int, help="override IMGSZ")
    parser.add_argument("--batch", type=int, help="override BATCH")
    parser.add_argument("--nbs", type=int,
                        help="override NBS (optimizer step every round(NBS/BATCH) batches)")
    parser.add_argument("--iters", type=int, default=TIMED_ITERS, help="timed batches per layout")
    parser.add_argument("--warmup", type=int, default=WARMUP_ITERS, help="untimed batches per layout")
    parser.add_argument("--layouts", default=",".join(LAYOUTS),
                        help=f"comma-separated subset of {','.join(LAYOUTS)}")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    parser.add_argument("--deterministic", type=int, choices=(0, 1), help="override train.py's (default 1)")
    parser.add_argument("--device", help="cuda:0 or cpu (default: cuda:0 if present)")
    args = parser.parse_args(argv)

    import torch
    device = torch.device(args.device or ("cuda:0" if torch.cuda.is_available() else "cpu"))
    knobs = settings(args)
    cfg, weights_note = architecture(knobs["MODEL"])
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result = {"card": card, "device": str(device), "torch": torch.__version__, "model": knobs["MODEL"],
              "weights": weights_note, "imgsz": knobs["IMGSZ"], "batch": knobs["BATCH"], "nbs": knobs["NBS"],
              "optimizer": knobs["OPTIMIZER"], "amp": knobs["AMP"] if device.type == "cuda" else False,
              "deterministic": knobs["DETERMINISTIC"], "boxes_per_image": BOXES_PER_IMAGE, "layouts": {}}
    print(f"ceiling: {knobs['MODEL']} imgsz {knobs['IMGSZ']} batch {knobs['BATCH']} amp {result['amp']} "
          f"deterministic {knobs['DETERMINISTIC']} on {card}")
    for layout in args.layouts.split(",") + (["compile"] if args.compile else []):
        try:
            r = time_layout(knobs, cfg, device, layout, args.warmup, args.iters)
        except Exception as e:  # one layout failing (compile without a C compiler) must not lose the rest
            r = {"error": f"{type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"}
        result["layouts"][layout] = r
        print(f"  {layout:<14} " + (f"{r['img_per_s']:8.1f} img/s  {r['ms_per_batch']:7.2f} ms/batch  "
                                    f"peak {r['peak_reserved_mb']:.0f} MiB"
                                    if "error" not in r else r["error"]))
    ok = {k: v["img_per_s"] for k, v in result["layouts"].items() if "img_per_s" in v}
    result["best_layout"] = max(ok, key=ok.get) if ok else None
    result["best_img_per_s"] = ok.get(result["best_layout"], 0.0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"best: {result['best_layout']} {result['best_img_per_s']} img/s; wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
