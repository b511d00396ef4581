"""Names that differ between transformers 5 releases, resolved once against the installed one."""

from __future__ import annotations

from functools import cache


@cache
def cache_kwarg() -> str:
    """The KV cache's keyword in ``forward``, model outputs and generation kwargs: ``past_key_values``
    until transformers 5.24 renamed it ``cache`` (the old name warns, then goes in 5.40)."""
    from transformers.generation import utils

    return "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


__all__ = ["cache_kwarg"]
