"""Binding a checked recipe's parts to the model they will run on."""

from __future__ import annotations

from typing import Any

from mllm_refine.engine.decoder import Decoder
from mllm_refine.engine.parts import SetupError
from mllm_refine.recipes.loader import Recipe
from mllm_refine.recipes.schema import RecipeError


def decoder_for(recipe: Recipe, model: Any, processor: Any) -> Decoder:
    """The recipe's decoder on ``model``: its parts are set up there, once, so a setting that does
    not fit the model (a layer outside it, a ratio outside 0..1) is one ``RecipeError`` naming
    the recipe file and the key."""
    try:
        return Decoder(model, processor, recipe.parts, recipe.decode)
    except SetupError as e:
        raise RecipeError(f"{recipe.source}: {e}") from e
