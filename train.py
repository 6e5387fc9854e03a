"""
One ship-detection experiment: train an Ultralytics YOLO model for the fixed 5-minute budget and
print the summary. This is the agent's file: every knob above the line is fair game.

Usage:
    uv run train.py > run.log 2>&1
    grep "^fitness:\\|^peak_vram_mb:" run.log

Knobs use Ultralytics' own argument names (docs.ultralytics.com/usage/cfg), lower-cased.
"""

import prepare  # first: makes the run offline and turns any failure into an `error:` line
from prepare import TIME_BUDGET
from ultralytics import YOLO

# ---------------------------------------------------------------------------
# Knobs
# ---------------------------------------------------------------------------

MODEL = "yolo11n.pt"     # .pt: pretrained (weights/), .yaml: from scratch (yolo11s.yaml, yolo26n.yaml, ...)
IMGSZ = 640              # training and validation image size
BATCH = 128              # images per batch
NBS = 128                # nominal batch: gradients accumulate over round(NBS / BATCH) batches
OPTIMIZER = "SGD"        # SGD, MuSGD, Adam, AdamW, NAdam, RAdam, RMSProp ('auto' decides by epochs, not time)
LR0 = 0.01               # initial learning rate
LRF = 0.01               # final learning rate as a fraction of LR0
MOMENTUM = 0.937         # SGD momentum / Adam beta1
WEIGHT_DECAY = 0.0005
WARMUP_EPOCHS = 3.0
COS_LR = False           # cosine instead of linear decay (the schedule is stretched to the time budget)
CLOSE_MOSAIC = 10        # turn mosaic off for the last N epochs
MOSAIC = 1.0             # augmentation probabilities and strengths
MIXUP = 0.0
HSV_H, HSV_S, HSV_V = 0.015, 0.7, 0.4
DEGREES = 0.0
TRANSLATE = 0.1
SCALE = 0.5
FLIPLR = 0.5
FLIPUD = 0.0
FREEZE = None            # freeze the first N layers (transfer learning)
AMP = True               # mixed precision on GPU
GPU_DATA = True          # decode training images once, keep them on the GPU and augment there (prepare.py)
WORKERS = 8              # with GPU_DATA = False: Ultralytics' CPU dataloader processes (0 on CPU)
CACHE = False            # with GPU_DATA = False: 'ram' or 'disk' caches decoded images
VAL = False              # validate every epoch (True) or only the last one, which gives the metric (False)
PLOTS = False            # plots cost seconds of the budget and are not needed for the metric
SEED = 0
DEVICE = None            # None: GPU 0 (else the CPU); 1: GPU 1; [0, 1]: one run over both (DDP, BATCH split)

# ---------------------------------------------------------------------------
# Train (the budget, data, device and run folder are fixed by prepare.py; the guard checks them)
# ---------------------------------------------------------------------------

# checks dataset, device and weights before any GPU time
run = prepare.start(MODEL, device=DEVICE, gpu_data=GPU_DATA)
model = YOLO(run.weights)
model.train(
    trainer=prepare.Trainer, data=run.data, time=TIME_BUDGET / 3600, device=run.device,
    project=run.project, name=run.name, exist_ok=True,
    imgsz=IMGSZ, batch=BATCH, nbs=NBS, optimizer=OPTIMIZER, lr0=LR0, lrf=LRF, momentum=MOMENTUM,
    weight_decay=WEIGHT_DECAY, warmup_epochs=WARMUP_EPOCHS, cos_lr=COS_LR, close_mosaic=CLOSE_MOSAIC,
    mosaic=MOSAIC, mixup=MIXUP, hsv_h=HSV_H, hsv_s=HSV_S, hsv_v=HSV_V, degrees=DEGREES,
    translate=TRANSLATE, scale=SCALE, fliplr=FLIPLR, flipud=FLIPUD, freeze=FREEZE, amp=AMP,
    workers=WORKERS, cache=CACHE, val=VAL, plots=PLOTS, seed=SEED,
)
prepare.finish(model)  # the honest-metric guard, then the summary (the last lines of the log)
