#!/usr/bin/env bash
# Agent-edits benchmark (not a test): edits an agent is likely to make to train.py, each run for a 60 s budget
# beside its own model-only ceiling (tests/bench_ceiling.py with the edit's MODEL, IMGSZ, BATCH, NBS, AMP and
# OPTIMIZER, channels_last). Each edit must end one of two ways: a summary whose steady img/s is at least 70% of
# that ceiling, or an `error:` before training that says what to change. Prints one table last; logs and profiles
# go to $OUT (default bench-edits). The full stand-in must exist (`python prepare.py --synthetic full`).
#
# Usage (repo root, GPU machine):
#   GPUS="0 1 2 3" PYTHON=python3 bash tests/bench_edits.sh      # edits spread over the cards, one at a time each
#   ONLY="base val" bash tests/bench_edits.sh                    # some edits only
#   RUN=0 bash tests/bench_edits.sh                              # the table of what $OUT holds, no runs
# The same command again resumes: an edit whose log ended (summary or error) is reported, not rerun. Edits that run
# at once share the host's CPUs: take throughput from solo runs where it matters (tests/bench.sh).
set -uo pipefail
PY=${PYTHON:-uv run --project "$PWD" python}
OUT=${OUT:-bench-edits}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-/tmp/bench-edits}
export BUDGET=${BUDGET:-60}
CEILING_KNOBS='^(MODEL|IMGSZ|BATCH|NBS|AMP|OPTIMIZER) '
TRAIN_ARG='s/seed=SEED,/seed=SEED, ARG,/'  # ARG: an Ultralytics argument beyond train.py's knobs
export PYTHONUNBUFFERED=1

# label<TAB>sed script for train.py
EDITS=$(cat <<'EOF'
base	
yolo11s	s/^MODEL = "yolo11n.pt"/MODEL = "yolo11s.pt"/
yolo11m	s/^MODEL = "yolo11n.pt"/MODEL = "yolo11m.pt"/
imgsz320	s/^IMGSZ = 640 /IMGSZ = 320 /
imgsz1280	s/^IMGSZ = 640 /IMGSZ = 1280 /; s/^BATCH = 128 /BATCH = 32 /
batch16	s/^BATCH = 128 /BATCH = 16 /
batch256	s/^BATCH = 128 /BATCH = 256 /
Adam	s/^OPTIMIZER = "SGD"/OPTIMIZER = "Adam"/; s/^LR0 = 0.01 /LR0 = 0.001 /
AdamW	s/^OPTIMIZER = "SGD"/OPTIMIZER = "AdamW"/; s/^LR0 = 0.01 /LR0 = 0.001 /
NAdam	s/^OPTIMIZER = "SGD"/OPTIMIZER = "NAdam"/; s/^LR0 = 0.01 /LR0 = 0.001 /
RAdam	s/^OPTIMIZER = "SGD"/OPTIMIZER = "RAdam"/; s/^LR0 = 0.01 /LR0 = 0.001 /
RMSProp	s/^OPTIMIZER = "SGD"/OPTIMIZER = "RMSProp"/; s/^LR0 = 0.01 /LR0 = 0.001 /
MuSGD	s/^OPTIMIZER = "SGD"/OPTIMIZER = "MuSGD"/
cos_lr	s/^COS_LR = False/COS_LR = True/
mixup	s/^MIXUP = 0.0/MIXUP = 0.2/
degrees	s/^DEGREES = 0.0/DEGREES = 10.0/
flipud	s/^FLIPUD = 0.0/FLIPUD = 0.5/
close_mosaic0	s/^CLOSE_MOSAIC = 10 /CLOSE_MOSAIC = 0 /
freeze10	s/^FREEZE = None /FREEZE = 10 /
val	s/^VAL = False/VAL = True/
cache_ram	s/^CACHE = False/CACHE = "ram"/
loss_gains	ARG=box=10.0, cls=1.0, dfl=2.0
dropout	ARG=dropout=0.1
multi_scale	ARG=multi_scale=0.5
rect	ARG=rect=True
gpu_data_off	s/^GPU_DATA = True/GPU_DATA = False/; s/^WORKERS = 8 /WORKERS = 16 /
EOF
)

copy_edit() {  # $1: label, $2: sed script -> $WORK/$1 with a profiled train.py
  local dir=$WORK/$1 script=$2
  if [[ $script == ARG=* ]]; then script=${TRAIN_ARG/ARG/${script#ARG=}}; fi
  rm -rf "$dir" && mkdir -p "$dir" && cp -r prepare.py harness tests/bench_profile.py "$dir/"
  sed -e "$script" train.py > "$dir/train.py"
  sed -i '/^model = YOLO(/a import bench_profile; bench_profile.attach(model)' "$dir/train.py"
  if [ -d weights ]; then ln -sfn "$PWD/weights" "$dir/weights"; fi
}
ceiling_of() {  # $1: label -> the JSON of its ceiling knobs (shared by edits with the same ones)
  echo "$OUT/ceiling-$(grep -E "$CEILING_KNOBS" "$WORK/$1/train.py" | md5sum | cut -c1-8).json"
}
run_edit() {  # $1: label, $2: GPU
  local label=$1 gpu=$2 json
  if [ -s "$OUT/$label.log" ] && tail -20 "$OUT/$label.log" | grep -q '^\(fitness\|error\):'; then return; fi
  json=$(ceiling_of "$label")
  basename "$json" > "$OUT/$label.ceiling"
  if [ ! -s "$json" ] && mkdir "$json.lock" 2>/dev/null; then
    CUDA_VISIBLE_DEVICES=$gpu timeout "${CEILING_TIMEOUT:-300}" $PY tests/bench_ceiling.py \
      --train "$WORK/$label/train.py" --layouts channels_last --out "$json" > "${json%.json}.log" 2>&1
  fi
  date +%s.%N > "$OUT/$label.wall"
  (cd "$WORK/$label" && CUDA_VISIBLE_DEVICES=$gpu AUTORESEARCH_TIME_BUDGET=$BUDGET \
    BENCH_PROFILE_OUT="$OUT/$label.profile.json" timeout 600 $PY train.py) > "$OUT/$label.log" 2>&1
  date +%s.%N >> "$OUT/$label.wall"
}

labels=()
while IFS=$'\t' read -r label script; do
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $label "* ]]; then continue; fi
  if [ "${RUN:-1}" = 0 ] || copy_edit "$label" "$script"; then labels+=("$label"); fi
done <<< "$EDITS"
gpus=(${GPUS:-0})
if [ "${RUN:-1}" = 0 ]; then gpus=(); fi
for ((g = 0; g < ${#gpus[@]}; g++)); do  # card g takes edits g, g + cards, ...
  (for ((i = g; i < ${#labels[@]}; i += ${#gpus[@]})); do run_edit "${labels[i]}" "${gpus[g]}"; done) &
done
wait

$PY - "$OUT" "${labels[@]}" <<'EOF' | tee "$OUT/table.txt"
import json, os, subprocess, sys
from pathlib import Path
sys.path.insert(0, "tests")
from bench_profile import summary_of
out, labels = Path(sys.argv[1]), sys.argv[2:]
try:
    card = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                          text=True).stdout.splitlines()[0]
except (OSError, IndexError):
    card = "no GPU"
print(f"card: {card}; budget per edit: {os.environ['BUDGET']} s")
print(f"{'edit':<14} {'outcome':<11} {'steady img/s':>12} {'ceiling':>8} {'share':>6} {'epochs':>6} {'fitness':>8} "
      f"{'wall s':>7}  note")
for label in labels:
    if not (out / f"{label}.log").is_file():
        print(f"{label:<14} not run")
        continue
    log = (out / f"{label}.log").read_text(errors="replace")
    lines = log.rstrip().splitlines() or ["(empty log)"]
    summary = summary_of(log)
    wall = (out / f"{label}.wall").read_text().split() if (out / f"{label}.wall").is_file() else []
    wall_s = f"{float(wall[1]) - float(wall[0]):.0f}" if len(wall) == 2 else "?"
    profile_path = out / f"{label}.profile.json"
    profile = json.loads(profile_path.read_text()) if profile_path.is_file() else {}
    if "fitness" not in summary:  # at start: before the training clock
        when = "trained" if "clock_start" in profile.get("moments", {}) else "start"
        print(f"{label:<14} {'error@' + when:<11} {'':>44} {wall_s:>7}  {lines[-1][:150]}")
        continue
    steady = profile["totals"]["steady_img_per_s"]
    ceiling_json = out / (out / f"{label}.ceiling").read_text().strip()
    ceiling = json.loads(ceiling_json.read_text())["best_img_per_s"] if ceiling_json.is_file() else 0.0
    share = steady / ceiling if ceiling else 0.0
    ok = "no ceiling" if not ceiling else "ok" if share >= 0.7 else "SLOW"
    print(f"{label:<14} {ok:<11} {steady:>12.1f} {ceiling:>8.1f} {100 * share:>5.1f}% {summary['epoch']:>6} "
          f"{float(summary['fitness']):>8.4f} {wall_s:>7}  val_seconds {summary.get('val_seconds', '?')}")
EOF
