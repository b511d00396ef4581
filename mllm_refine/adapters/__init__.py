"""Built-in model adapters, registered through the plugin hooks like any third-party adapter."""

from __future__ import annotations

from typing import Callable

from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.adapters.llava import LlavaAdapter
from mllm_refine.adapters.llava_next import LlavaNextAdapter
from mllm_refine.adapters.qwen_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter, Qwen3VLAdapter
from mllm_refine.hookspecs import hookimpl

BUILTIN_ADAPTERS: list[type[ModelAdapter]] = [
    LlavaAdapter,
    LlavaNextAdapter,
    Qwen2VLAdapter,
    Qwen2_5_VLAdapter,
    Qwen3VLAdapter,
]


@hookimpl
def register_adapters(register: Callable[[type], None]) -> None:
    for cls in BUILTIN_ADAPTERS:
        register(cls)


__all__ = [
    "ModelAdapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "Qwen3VLAdapter",
    "BUILTIN_ADAPTERS",
]
