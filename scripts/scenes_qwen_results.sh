#!/usr/bin/env bash
# Every recipe of recipes/scenes_qwen/ over the easy-VQA scenes test split and its POPE split
# (adversarial subset), then the paired comparisons of docs/results.md.
#   scripts/scenes_qwen_results.sh [LIMIT]     LIMIT: first questions of each split (default: all)
# Reruns resume: a finished run folder is skipped, an interrupted one continues.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:+data.limit=$1}
out=runs/scenes_qwen${1:+-$1}
for f in recipes/scenes_qwen/*.yaml; do
  r=$(basename "$f" .yaml)
  [ "$r" = model ] && continue
  mllm-refine run "$f" --output "$out/scenes/$r" $limit --threads 1
  mllm-refine run "$f" --output "$out/pope/$r" data.name=easy_vqa_scenes_pope data.subset=adversarial $limit --threads 1
done
mllm-refine compare "$out"/scenes/*
mllm-refine compare "$out"/pope/*
