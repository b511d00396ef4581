#!/usr/bin/env bash
# Rebuild the embedded model's shipped assets exactly as they were made (CPU, seeded; about
# 70 minutes on 2 cores): phase 1 trains the vision tower, projector and LoRA factors; phase 2
# continues with yes/no answers balanced (the tower frozen), then scores the full test split.
set -euo pipefail
cd "$(dirname "$0")/.."
phase1=$(mktemp -d)
python scripts/build_embedded.py --seed 0 --threads 1 --out "$phase1" --no-eval
python scripts/build_embedded.py --seed 0 --threads 1 --init-from "$phase1" --vision-steps 0 --steps 300 \
    --balance-yes-no --tower-lr 0 --aux-weight 0 --val-every 50 "$@"
rm -rf "$phase1"
