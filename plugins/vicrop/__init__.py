"""ViCrop, "MLLMs Know Where to Look: Training-free Perception of Small Visual Details with
Multimodal LLMs" (ICLR 2025, arXiv 2502.17422), and the crop reading of contrastive attention
("Where Does Vision Meet Language?", arXiv 2601.08151).

Two InputRefiners: ``vicrop`` (importance map by ``rel_att``, ``grad_att`` or ``pure_grad``) and
``contrastive_crop``. Each finds a box on its map (``box.py``) and answers with the original
image plus the crop. See docs/methods/vicrop.md for the readings taken where the paper is silent.
"""

from __future__ import annotations

from typing import Callable

from mllm_refine.hookspecs import hookimpl
from mllm_refine_plugins.vicrop.refiner import ContrastiveCrop, ViCrop


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(ViCrop)
    register(ContrastiveCrop)


__all__ = ["ContrastiveCrop", "ViCrop", "register_components"]
