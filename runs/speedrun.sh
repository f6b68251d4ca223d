#!/usr/bin/env bash
# Time-to-quality on a CPU: train pocketgpt's `cpu-speedrun` preset on tiny Shakespeare (nanoGPT's 90/10 split)
# and print the validation bits per byte on the whole held-out split. About 30 seconds on 2 cores.
#
#   bash runs/speedrun.sh [TEXT_FILE] [OUT_DIR]
#
# benchmarks/speedrun.py runs this side by side with nanoGPT's CPU recipe and an ablation of each change.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/tinyshakespeare.txt}"
OUT="${2:-runs/speedrun}"
if [ ! -f "$DATA" ]; then
  echo "speedrun: no such file: $DATA (pass a text file, e.g. tiny Shakespeare)" >&2
  exit 2
fi
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
rm -rf "$OUT"
exec "$PY" -m pocketgpt.cli.main train --preset cpu-speedrun --data "$DATA" --out "$OUT"
