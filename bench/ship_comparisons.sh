#!/usr/bin/env bash
# The shipped comparison of issue 14: every method on the offline rewards, on the shipped base, then copied
# into checkpoints/runs/<reward>/ (bench/ship_runs.py). Resumable: run it again after a stop and finished
# runs are skipped, an unfinished one resumes from its last checkpoint (every 5 steps).
#
#     bash bench/ship_comparisons.sh                 # all four rewards, one after another
#     bash bench/ship_comparisons.sh geometry        # one of them
#     OUT=/elsewhere bash bench/ship_comparisons.sh  # the comparison folders (default outputs/comparison)
#
# Settings, the same for every method and reward: batch 4 trajectories x 10 sampler steps, reward renders
# 64 px from 4 views; 20 optimiser steps per run, 2 seeds; held-out evaluation (24 prompts x 2 seeds) at
# steps 0, 10, 20; the sweep (3 learning rates, then 2 more values of one knob) at 6 steps per run.
# Cost, measured at --threads 1 with two rewards side by side on the 2 cores: geometry 93 min, colorfulness
# 97 min (about 25 min of sweep training, 40 min of final training, the rest evaluation and samples), so the
# four rewards take about 3 h of wall time in two streams of two, ~6.3 core-hours (the issue asks for 6 h;
# tests ran beside them). --threads 1 keeps the numbers reproducible on any machine with one free core:
#     bash bench/ship_comparisons.sh geometry alignment &
#     bash bench/ship_comparisons.sh colorfulness alignment:1,geometry:0.5
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/comparison}
REWARDS=("$@")
[ ${#REWARDS[@]} -eq 0 ] && REWARDS=(geometry alignment colorfulness "alignment:1,geometry:0.5")
for reward in "${REWARDS[@]}"; do
  name=$(python -c "import sys; print('+'.join(p.split(':')[0] for p in sys.argv[1].split(',')))" "$reward")
  python bench/compare_methods.py --reward "$reward" --methods all --seeds 2 --steps 20 \
    --sweep --sweep-steps 6 --threads 1 --resume --out "$OUT/$name" \
    --set batch_size=4 sampler_steps=10 render_resolution=64 eval_every=10 sample_every=10 checkpoint_every=5
  python bench/ship_runs.py "$OUT/$name" --name "$name" --force
done
