#!/usr/bin/env bash
# Every recipe of recipes/scenes_qwen/ over the easy-VQA scenes test split, then over its POPE
# split (adversarial subset), then the paired comparisons of docs/results.md.
#   scripts/scenes_qwen_results.sh [LIMIT] [THREADS]   LIMIT: first questions of each split (default: all)
# Vanilla and vicrop_rel run first, and every recipe finishes the scenes split before any starts
# POPE, so a partial run already answers the localisation question. Reruns resume: a finished run
# folder is skipped, an interrupted one continues.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:+data.limit=$1}
threads=${2:-1}
out=runs/scenes_qwen${1:+-$1}
recipes="vanilla vicrop_rel $(ls recipes/scenes_qwen/*.yaml | xargs -n1 basename | sed 's/\.yaml$//' \
  | grep -vxE 'model|vanilla|vicrop_rel' | tr '\n' ' ')"
for r in $recipes; do
  mllm-refine run "recipes/scenes_qwen/$r.yaml" --output "$out/scenes/$r" $limit --threads "$threads"
done
for r in $recipes; do
  mllm-refine run "recipes/scenes_qwen/$r.yaml" --output "$out/pope/$r" \
    data.name=easy_vqa_scenes_pope data.subset=adversarial $limit --threads "$threads"
done
mllm-refine compare "$out"/scenes/*
mllm-refine compare "$out"/pope/*
