#!/usr/bin/env bash
# The study's second edition (issue 28): four methods on the four offline rewards at a protocol sized to this
# 2-core CPU, tuned by the paired held-out sweep, with LoRA-scale fronts. Resumable at any point: run the same
# command again and finished runs are skipped, a cut one resumes from its last checkpoint (every 5 steps), so
# the study runs in chunks (one per working session) until every reward is done; then ship each reward with
#     python bench/ship_runs.py outputs/second-edition/<name> --name <name> --force --every-adapter
# (every seed's adapter, ~1 MB each: 4 methods x 3 seeds x 4 rewards ~ 46 MB, within the 80 MB the issue allows once
# the first edition's folders are replaced)
#
#     bash bench/second_edition.sh                       # all four rewards, one after another
#     bash bench/second_edition.sh geometry colorfulness & bash bench/second_edition.sh alignment 'alignment:1,geometry:0.5'
#                                                        # two streams, one per core (how it runs)
#     OUT=/elsewhere bash bench/second_edition.sh ...    # the study folders (default outputs/second-edition)
#     bash bench/second_edition.sh --pack [reward ...]   # before a session ends: carry the progress (engine/study/carry.py)
#
# Chained across sessions on machines whose disk does not persist: --pack copies what resuming needs (statuses,
# metrics, evaluations, sweep scores, final adapters, unfinished runs' checkpoints; a few MB) to
# $CARRY/<name> (default checkpoints/study-progress/second-edition), which is committed; a later session's
# first start unpacks it into a study folder that does not exist yet and resumes from there.
#
# Protocol, the same for every method: batch 8 trajectories x 20 sampler steps (the paper's), 60 optimiser steps,
# seeds 0-2; held-out evaluation at the end on the 24 held-out prompts x 4 seeds; the sweep (learning rate, then the
# method's own knob, grids extended while the best sits at an end) at 20 steps per trial, scored on 24 prompts x 2
# fresh seeds; fronts at LoRA scales 0.25-1. Geometry (alone or in the ensemble) renders 128 px from 8 views; alone
# it starts its learning-rate grid at 3e-5, in the ensemble at 1e-4 (bench/geometry_gradient.py: at 64 px no step raises the held-out reward;
# at 128 px only steps of norm <= 0.03 do, and 8 views double the agreement of independent batch gradients).
# Methods: Nabla-R2D3, ReFL, DRaFT-1 (the baseline Nabla-R2D3 resembles early on) and DDPO (the RL family); the
# others are left out for the budget (one step at this protocol, 1 thread, geometry: Nabla-R2D3 ~31 s, DDPO ~21 s,
# ReFL ~8 s; with both streams running, Nabla-R2D3 measured 35-42 s). Evaluation costs too: ~1.3 s per held-out
# asset, ~2.5 s per front point's asset (its ε-KL pass), so the fronts (12 runs x 4 scales x 96 assets) take ~3 of
# each reward's ~10 core-hours; the study ~40 core-hours, ~20 h on the two cores, in about eight chunks of a session.
# DDPO tunes the learning rate only (its clip never binds with one update per sampled batch).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/second-edition}
CARRY=${CARRY:-checkpoints/study-progress/second-edition}
PACK=0
[ "${1:-}" = "--pack" ] && { PACK=1; shift; }
REWARDS=("$@")
[ ${#REWARDS[@]} -eq 0 ] && REWARDS=(geometry alignment colorfulness "alignment:1,geometry:0.5")
COMMON=(--methods nabla-r2d3,refl,draft-1,ddpo --seeds 3 --steps 60 --sweep --sweep-steps 20 --fronts --threads 1 --resume)
RUN=(batch_size=8 sampler_steps=20 eval_seeds=4 eval_every=60 sample_every=60 checkpoint_every=5)
for reward in "${REWARDS[@]}"; do
  name=$(python -c "import sys; print('+'.join(p.split(':')[0] for p in sys.argv[1].split(',')))" "$reward")
  if [ $PACK = 1 ]; then
    [ -d "$OUT/$name" ] && python -m engine.study.carry pack "$OUT/$name" "$CARRY/$name"
    continue
  fi
  [ -d "$CARRY/$name" ] && python -m engine.study.carry unpack "$CARRY/$name" "$OUT/$name"
  case "$reward" in
    geometry) rig=(render_resolution=128 reward_views=8); lrs=(--sweep-lrs 3e-5,1e-4,3e-4) ;;
    *geometry*) rig=(render_resolution=128 reward_views=8); lrs=(--sweep-lrs 1e-4,3e-4,1e-3) ;;
    *) rig=(render_resolution=64 reward_views=4); lrs=() ;;
  esac
  python bench/compare_methods.py --reward "$reward" "${COMMON[@]}" "${lrs[@]}" --out "$OUT/$name" --set "${RUN[@]}" "${rig[@]}"
done
