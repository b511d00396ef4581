"""YAML recipes: load, override, check."""

from mllm_refine.recipes.loader import Recipe, build, load_recipe, parse_override, resolve_recipe
from mllm_refine.recipes.schema import RecipeError

__all__ = ["Recipe", "RecipeError", "build", "load_recipe", "parse_override", "resolve_recipe"]
