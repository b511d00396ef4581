"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): a base grid plus "anyres" tiles per image."""

from __future__ import annotations

from typing import Mapping

from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.lazy import torch


class LlavaNextAdapter(ModelAdapter):
    """LLaVA-NeXT (LLaVA-1.6) checkpoints with the ``spatial_unpad`` packing of transformers.

    Layers, norm and head: ``model.model.language_model.{layers, norm}``, ``model.lm_head``.
    Image tokens: each ``<image>`` (``config.image_token_id``) expands to two grids, in order
    (see ``LlavaNextModel.pack_image_features``):

    1. the base grid: the whole image resized to ``S x S``, ``(S/P) x (S/P)`` tokens, row-major;
    2. the packed tiles: the image is resized and padded to its best ``image_grid_pinpoints``
       resolution and cut into ``gh x gw`` tiles of ``S x S``; their patch grids are stitched
       into one ``(gh * S/P) x (gw * S/P)`` grid, the padding rows (or columns) are cut off
       again, and the rest is read row-major with one ``image_newline`` token ending every row.
       A tile is therefore not a contiguous run of tokens: token rows cross tile borders.

    ``image_grid`` gives ``[(S/P, S/P), (rows, cols)]`` per image, ``cols`` without the newline;
    ``row_end_tokens = (0, 1)`` says the second grid has one extra token per row.
    """

    name = "llava_next"
    model_types = ("llava_next",)
    model_classes = ("LlavaNextForConditionalGeneration",)
    row_end_tokens = (0, 1)

    def grids_of_images(self, inputs: Mapping[str, torch.Tensor]) -> list[list[tuple[int, int]]]:
        # Imported here: the modeling module takes seconds to import, and listing plugins must not.
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

        config = self.model.config
        if config.vision_feature_select_strategy != "default":
            raise ValueError("image_grid: only the 'default' vision_feature_select_strategy (no CLS) has a pure grid")
        size, patch = config.vision_config.image_size, config.vision_config.patch_size
        side = size // patch
        grids = []
        for height, width in inputs["image_sizes"].tolist() if "image_sizes" in inputs else []:
            tiles_h, tiles_w = get_anyres_image_grid_shape((height, width), config.image_grid_pinpoints, size)
            # The model's own unpadding, applied to an empty (0, rows, cols) feature map.
            stitched = torch.empty(0, tiles_h * side, tiles_w * side)
            rows, cols = unpad_image(stitched, (height, width)).shape[1:]
            grids.append([(side, side), (rows, cols)])
        return grids
