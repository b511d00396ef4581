"""Binding a checked recipe's parts to the model they will run on."""

from __future__ import annotations

from mllm_refine.components import ModelInfo
from mllm_refine.recipes.loader import Recipe
from mllm_refine.recipes.schema import RecipeError


def setup_parts(recipe: Recipe, info: ModelInfo) -> None:
    """Bind each part to the loaded model, so a setting that does not fit it (a layer outside the
    model, a ratio outside 0..1) is one ``RecipeError`` naming the recipe file and the key."""
    for key, part in recipe.parts.keyed():
        try:
            part.setup(info)
        except ValueError as e:
            raise RecipeError(f"{recipe.source}: {key}.{e}") from e
