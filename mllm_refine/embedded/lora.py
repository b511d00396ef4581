"""Low-rank adapters on the language model: trained by the build, shipped as small factors and
merged into the dequantized SmolLM2 weights when the checkpoint is assembled."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class LoRALinear(nn.Module):
    """``base(x) + scale * B(A(x))``; ``B`` starts at zero so training starts from the base LM."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))  # (out, r)
        bound = 1.0 / math.sqrt(base.in_features)
        with torch.no_grad():
            self.lora_A.uniform_(-bound, bound, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * nn.functional.linear(nn.functional.linear(x, self.lora_A), self.lora_B)


def _targets(lm: Any, targets: tuple[str, ...]) -> list[tuple[str, nn.Module, str]]:
    """``(qualified name, parent module, attribute)`` of every adapted linear layer."""
    found = []
    for name, module in lm.named_modules():
        for attr in targets:
            child = getattr(module, attr, None)
            if isinstance(child, (nn.Linear, LoRALinear)):
                found.append((f"{name}.{attr}" if name else attr, module, attr))
    return found


def add_lora(lm: Any, targets: tuple[str, ...], rank: int, alpha: float, seed: int) -> list[nn.Parameter]:
    """Wraps the target linears of ``lm`` in place; returns the new trainable parameters."""
    generator = torch.Generator().manual_seed(seed)
    params: list[nn.Parameter] = []
    for _, parent, attr in _targets(lm, targets):
        wrapped = LoRALinear(getattr(parent, attr), rank, alpha, generator)
        setattr(parent, attr, wrapped)
        params += [wrapped.lora_A, wrapped.lora_B]
    return params


def lora_state_dict(lm: Any, targets: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state = {}
    for name, parent, attr in _targets(lm, targets):
        module = getattr(parent, attr)
        state[f"{name}.lora_A"] = module.lora_A.detach().clone().contiguous()
        state[f"{name}.lora_B"] = (module.lora_B.detach() * module.scale).contiguous()  # scale folded in
    return state


def load_lora(lm: Any, state: dict[str, torch.Tensor], targets: tuple[str, ...]) -> int:
    """Sets the factors of a wrapped ``lm`` from ``lora_state_dict`` output (to continue training)."""
    loaded = 0
    with torch.no_grad():
        for name, parent, attr in _targets(lm, targets):
            module = getattr(parent, attr)
            if isinstance(module, LoRALinear) and f"{name}.lora_A" in state:
                module.lora_A.copy_(state[f"{name}.lora_A"])
                module.lora_B.copy_(state[f"{name}.lora_B"] / module.scale)  # the scale was folded in
                loaded += 1
    return loaded


def merge_lora(lm: Any, state: dict[str, torch.Tensor]) -> int:
    """``W += B @ A`` for every adapted layer of a plain (unwrapped) ``lm``; returns the count."""
    modules = dict(lm.named_modules())
    merged = 0
    with torch.no_grad():
        for key in sorted(k for k in state if k.endswith(".lora_A")):
            name = key[: -len(".lora_A")]
            if name not in modules:
                raise KeyError(f"LoRA weights for {name}, which the language model does not have")
            weight = modules[name].weight  # (out, in)
            delta = state[f"{name}.lora_B"].double() @ state[key].double()  # (out, r) @ (r, in)
            weight.copy_((weight.double() + delta).to(weight.dtype))
            merged += 1
    return merged


def unwrap_lora(lm: Any, targets: tuple[str, ...]) -> None:
    """Puts the base linears back, with the adapters merged into them."""
    for _, parent, attr in _targets(lm, targets):
        module = getattr(parent, attr)
        if isinstance(module, LoRALinear):
            with torch.no_grad():
                delta = (module.scale * module.lora_B.double()) @ module.lora_A.double()
                module.base.weight.copy_((module.base.weight.double() + delta).to(module.base.weight.dtype))
            setattr(parent, attr, module.base)
