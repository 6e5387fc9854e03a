#!/usr/bin/env bash
# GPU benchmark (not a test): stand-in generation, dataset-check time, default train.py runs with
# their summaries set against nvidia-smi, and optionally a longer budget and the GPU-only faults.
# Prints a table last; logs go to $OUT (default ./bench-out).
#
# Usage (repo root, GPU machine):
#   bash tests/bench.sh                 # generation, checks, one default run (SEED = 0)
#   SEEDS="0 1 2" bash tests/bench.sh   # one default run per seed: the noise between seeds
#   LONG=1200 bash tests/bench.sh       # also one run with a 1200 s budget (a copy of the harness)
#   FAULTS=1 bash tests/bench.sh        # also out-of-memory, and two agents at once on one GPU
# PYTHON defaults to the uv environment; the lent GPU machine uses PYTHON=python3 with carried wheels.
set -euo pipefail
PY=${PYTHON:-uv run --project "$PWD" python}  # the runs cd into copies of the repo
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
cache=${AUTORESEARCH_CACHE:-$HOME/.cache/autoresearch-ships}
row() { printf '%-44s %s\n' "$1" "$2" | tee -a "$OUT/table.txt"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
summary() { grep "^$2:" "$1" | cut -d' ' -f2- || echo "(missing: $(tail -1 "$1"))"; }
copy() {  # $1: folder; then sed expressions for train.py
  local dir=$1; shift
  mkdir -p "$dir" && cp prepare.py "$dir/" && sed "$@" train.py > "$dir/train.py"
}

: > "$OUT/table.txt"
row "card" "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

# 1. The stand-in at Kaggle scale (13,435 images), all cores.
t=$(now); $PY prepare.py --synthetic full > "$OUT/generate.log" 2>&1; row "generate full stand-in (s, $(nproc) cores)" "$(secs "$t" "$(now)")"

# 2. Dataset checks: cold (nothing cached) and warm (fingerprint cached).
rm -rf "$cache/checks"
t=$(now); $PY prepare.py --synthetic full > "$OUT/check.log" 2>&1; row "dataset check, cold (s, incl. imports)" "$(secs "$t" "$(now)")"
t=$(now); $PY prepare.py --synthetic full >> "$OUT/check.log" 2>&1; row "dataset check, warm (s, incl. imports)" "$(secs "$t" "$(now)")"

# 3. Default train.py runs; nvidia-smi samples the card's used memory every 200 ms.
run_train() {  # $1: log name, $2: folder holding prepare.py and train.py
  local idle smi
  idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 > "$OUT/$1.smi" &
  smi=$!
  (cd "$2" && $PY train.py) > "$OUT/$1.log" 2>&1 || true
  kill $smi
  row "$1: nvidia-smi peak minus idle (MiB)" "$(( $(sort -n "$OUT/$1.smi" | tail -1) - idle ))"
  for k in fitness training_seconds total_seconds peak_vram_mb epoch train_images_per_s weights; do
    row "$1: $k" "$(summary "$OUT/$1.log" $k)"
  done
}
for seed in ${SEEDS:-0}; do
  copy "/tmp/bench-seed$seed" "s/^SEED = 0/SEED = $seed/"
  run_train "seed$seed" "/tmp/bench-seed$seed"
done

# 4. Optional: the same train.py with a longer budget.
if [ -n "${LONG:-}" ]; then
  copy "/tmp/bench-long" ""
  sed -i "s/^TIME_BUDGET = 300 /TIME_BUDGET = $LONG /" /tmp/bench-long/prepare.py
  run_train "run$LONG" /tmp/bench-long
fi

# 5. Optional: the faults that need a GPU.
if [ -n "${FAULTS:-}" ]; then
  copy /tmp/bench-oom -e 's/^MODEL = .*/MODEL = "yolo11x.yaml"/' -e 's/^IMGSZ = 640/IMGSZ = 1280/' \
    -e 's/^BATCH = 32 /BATCH = 512 /' -e 's/^WORKERS = 8 /WORKERS = 2 /'
  (cd /tmp/bench-oom && $PY train.py) > "$OUT/oom.log" 2>&1 || true
  row "out of memory: last line" "$(tail -1 "$OUT/oom.log")"
  for i in 1 2; do copy "/tmp/bench-agent$i" ""; done
  for i in 1 2; do (cd "/tmp/bench-agent$i" && AUTORESEARCH_TIME_BUDGET=60 $PY train.py > "$OUT/agent$i.log" 2>&1) & done
  wait
  for i in 1 2; do
    row "agent$i of 2 at once: run_dir, fitness" "$(summary "$OUT/agent$i.log" run_dir), $(summary "$OUT/agent$i.log" fitness)"
  done
fi
echo; cat "$OUT/table.txt"
