"""Samples and datasets."""

from __future__ import annotations

from typing import Callable

from mllm_refine.hookspecs import hookimpl


@hookimpl
def register_datasets(register: Callable[[str, Callable], None]) -> None:
    from mllm_refine.data.manifest import Manifest
    from mllm_refine.data.shapes import Shapes

    register("manifest", Manifest)
    register("shapes", Shapes)
