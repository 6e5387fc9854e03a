#!/usr/bin/env bash
# GPU benchmark (not a test): stand-in generation, dataset-check time, and one default train.py run
# with its summary set against nvidia-smi. Prints a table last; logs go to $OUT (default ./bench-out).
#
# Usage (repo root, GPU machine):  bash tests/bench.sh          # generation, checks, one 300 s run
#                                  LONG=1200 bash tests/bench.sh  # also one run with a 1200 s budget
# PYTHON defaults to "uv run python"; the lent GPU machine uses PYTHON=python3 with carried wheels.
set -euo pipefail
PY=${PYTHON:-uv run python}
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
cache=${AUTORESEARCH_CACHE:-$HOME/.cache/autoresearch-ships}
row() { printf '%-44s %s\n' "$1" "$2" | tee -a "$OUT/table.txt"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

: > "$OUT/table.txt"
row "card" "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

# 1. The stand-in at Kaggle scale (13,435 images), all cores.
t=$(now); $PY prepare.py --synthetic full > "$OUT/generate.log" 2>&1; row "generate full stand-in (s, $(nproc) cores)" "$(secs "$t" "$(now)")"

# 2. Dataset checks: cold (nothing cached) and warm (fingerprint cached).
rm -rf "$cache/checks"
t=$(now); $PY prepare.py --synthetic full > "$OUT/check.log" 2>&1; row "dataset check, cold (s, incl. imports)" "$(secs "$t" "$(now)")"
t=$(now); $PY prepare.py --synthetic full >> "$OUT/check.log" 2>&1; row "dataset check, warm (s, incl. imports)" "$(secs "$t" "$(now)")"

# 3. One default train.py run; nvidia-smi samples the card's used memory every 200 ms.
run_train() {  # $1: log name, $2: folder holding prepare.py and train.py
  local idle smi
  idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 200 > "$OUT/$1.smi" &
  smi=$!
  (cd "$2" && $PY train.py) > "$OUT/$1.log" 2>&1 || true
  kill $smi
  row "$1: nvidia-smi peak minus idle (MiB)" "$(( $(sort -n "$OUT/$1.smi" | tail -1) - idle ))"
  for k in fitness training_seconds total_seconds peak_vram_mb epoch train_images_per_s data weights; do
    row "$1: $k" "$(grep "^$k:" "$OUT/$1.log" | cut -d' ' -f2- || echo "(missing: $(tail -1 "$OUT/$1.log"))")"
  done
}
run_train run300 .

# 4. Optional: the same train.py with a longer budget (a copy of the harness with TIME_BUDGET changed).
if [ -n "${LONG:-}" ]; then
  long=$(mktemp -d)
  sed "s/^TIME_BUDGET = 300 /TIME_BUDGET = $LONG /" prepare.py > "$long/prepare.py"
  cp train.py "$long/"
  run_train "run$LONG" "$long"
fi
echo; cat "$OUT/table.txt"
