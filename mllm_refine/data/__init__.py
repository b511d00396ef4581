"""Samples and datasets."""

from __future__ import annotations

from typing import Callable

from mllm_refine.hookspecs import hookimpl


@hookimpl
def register_datasets(register: Callable[[str, Callable], None]) -> None:
    from mllm_refine.data.benchmarks import GQA, POPE, DocVQA, TextVQA, VizWiz, VQAv2
    from mllm_refine.data.easy_vqa import EasyVQA, EasyVQAPope
    from mllm_refine.data.manifest import Manifest
    from mllm_refine.data.scenes import EasyVQAScenes
    from mllm_refine.data.scenes_pope import EasyVQAScenesPope
    from mllm_refine.data.shapes import Shapes

    register("manifest", Manifest)
    register("shapes", Shapes)
    register("vqav2", VQAv2)
    register("okvqa", VQAv2)
    register("gqa", GQA)
    register("textvqa", TextVQA)
    register("vizwiz", VizWiz)
    register("docvqa", DocVQA)
    register("pope", POPE)
    register("easy_vqa", EasyVQA)
    register("easy_vqa_pope", EasyVQAPope)
    register("easy_vqa_scenes", EasyVQAScenes)
    register("easy_vqa_scenes_pope", EasyVQAScenesPope)
