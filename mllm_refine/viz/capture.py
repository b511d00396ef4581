"""The diagnostic pass: one sample through a recipe's Decoder, every layer captured by the engine.

The recipe's own parts decide the tokens; on top of what they declared, the pass asks the engine
(``Needs``) for every block's attention row over the image, every layer's residual stream and
every block's pre-softmax row. Nothing here calls the model with ``output_attentions``: the
numbers are exactly the ``StepView`` values the parts themselves would read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from mllm_refine.components import Needs
from mllm_refine.data.sample import Sample
from mllm_refine.engine import DecodeConfig, Decoder, Parts, Prediction, StepView


@dataclass
class StepRecord:
    """What one step of one sample looked like, batch dimension dropped."""

    step: int
    attention: torch.Tensor  # (L, H, I) rows over the image, renormalised; row l-1 is block l
    image_mass: torch.Tensor  # (L, H) share of each row on the image before renormalising
    head_norm: torch.Tensor  # (L, H) L2 norm of each head's pre-softmax row over valid keys
    lens: torch.Tensor  # (L + 1, V) softmax of the logit lens of layers 0..L
    final: torch.Tensor  # (V,) softmax of the model's own logits z_N
    decoded: torch.Tensor  # (V,) softmax of the logits the step decoded from (after the parts)
    token: int = -1  # the token this step emitted; filled in after generation


@dataclass
class Trace:
    """One side of the comparison (vanilla or the recipe) for one sample."""

    side: str
    prediction: Prediction
    steps: list[StepRecord]
    num_layers: int
    num_heads: int
    grid: tuple[int, int] | None  # (rows, cols) of the first image grid, None when unknown
    row_end: int  # extra tokens after each row of that grid
    view: Image.Image | None  # the first image as the model sees it (after resize/crop)
    candidates: list[int] = field(default_factory=list)  # the selector's candidate layers
    token_text: dict[int, str] = field(default_factory=dict)


def diagnostic_needs(num_layers: int) -> Needs:
    """Every block's attention row and pre-softmax row, every layer's residual stream."""
    blocks = frozenset(range(1, num_layers + 1))
    return Needs(attention=blocks, hidden=frozenset(range(num_layers + 1)), scores=blocks)


def diagnostic_decoder(model: nn.Module, processor: Any, parts: Parts, config: DecodeConfig) -> Decoder:
    """A Decoder for ``parts`` that also captures everything ``diagnostic_needs`` names.

    Extra captures do not change the tokens: probed rows replace sdpa's output only where a
    head filter acted, exactly as in an ordinary run.
    """
    decoder = Decoder(model, processor, parts, config)
    decoder.needs = decoder.needs | diagnostic_needs(decoder.adapter.info().num_layers)
    return decoder


def record_step(view: StepView, logits: torch.Tensor, final_norm: bool = True) -> StepRecord:
    """Read one step of sample 0 from the engine's view."""
    L = view.num_layers
    blocks = range(1, L + 1)
    raw = torch.stack([view.attention(l, renormalize=False)[0] for l in blocks])  # (L, H, I)
    rows = torch.stack([view.attention(l)[0] for l in blocks])  # (L, H, I)
    norm = torch.stack([view.scores(l)[0].norm(dim=-1) for l in blocks])  # (L, H)
    lens = view.lenses(list(range(L + 1)), final_norm=final_norm)[0]  # (L+1, V)
    return StepRecord(
        step=view.step,
        attention=rows.float().cpu(),
        image_mass=raw.sum(-1).float().cpu(),
        head_norm=norm.float().cpu(),
        lens=lens.float().softmax(-1).cpu(),
        final=view.logits[0].float().softmax(-1).cpu(),
        decoded=logits[0].float().softmax(-1).cpu(),
    )


def model_view(decoder: Decoder, sample: Sample) -> tuple[Image.Image | None, tuple[int, int] | None, int]:
    """The first image as the model sees it, and the grid of its first block of image tokens.

    The picture is the processor's own pixels, de-normalised, where they are an image tensor
    (LLaVA: ``(N, 3, S, S)``; LLaVA-NeXT: ``(N, tiles, 3, S, S)``, tile 0 the whole image);
    otherwise (Qwen's flattened patches) the original picture, which its grid covers.
    """
    first = Sample(id=sample.id, question=sample.question, images=sample.images[:1])
    inputs = decoder.adapter.prepare([first])
    try:
        grid: tuple[int, int] | None = tuple(decoder.adapter.image_grid(inputs)[0][0])
    except (NotImplementedError, ValueError, IndexError):
        grid = None
    row_end = decoder.adapter.row_end_tokens[0]
    pixels = inputs.get("pixel_values")
    view = sample.images[0].convert("RGB") if sample.images else None
    ip = getattr(decoder.processor, "image_processor", None)
    if pixels is not None and pixels.ndim in (4, 5) and ip is not None:
        x = pixels[0] if pixels.ndim == 4 else pixels[0, 0]  # (3, S, S)
        mean = torch.tensor(getattr(ip, "image_mean", None) or [0.0, 0.0, 0.0])[:, None, None]
        std = torch.tensor(getattr(ip, "image_std", None) or [1.0, 1.0, 1.0])[:, None, None]
        if getattr(ip, "do_normalize", True):
            x = x.float() * std + mean
        rgb = (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # (S, S, 3)
        view = Image.fromarray(np.ascontiguousarray(rgb))
    return view, grid, row_end


def trace(
    decoder: Decoder, sample: Sample, side: str, all_tokens: bool = False, final_norm: bool = True
) -> Trace:
    """Answer ``sample`` with ``decoder`` (built by ``diagnostic_decoder``) and keep its steps."""
    steps: list[StepRecord] = []

    def observe(view: StepView, logits: torch.Tensor) -> None:
        if all_tokens or view.step == 0:
            steps.append(record_step(view, logits, final_norm))

    prediction = decoder.generate([sample], observe=observe)[0]
    eos_id = decoder.generation_config().eos_token_id
    eos = eos_id if isinstance(eos_id, list) else ([] if eos_id is None else [eos_id])
    for rec in steps:
        if rec.step < len(prediction.tokens):
            rec.token = prediction.tokens[rec.step]
        else:  # the step that ended the answer: the end token it most likely emitted
            rec.token = max(eos, key=lambda i: float(rec.decoded[i])) if eos else int(rec.decoded.argmax())
    info = decoder.adapter.info()
    view, grid, row_end = model_view(decoder, sample)
    selector = decoder.parts.layer_selector
    ids = {int(i) for rec in steps for i in rec.lens.topk(5, dim=-1).indices.flatten()}
    ids |= {rec.token for rec in steps} | {int(i) for rec in steps for i in rec.decoded.topk(5).indices}
    ids |= {int(i) for rec in steps for i in rec.final.topk(5).indices}
    return Trace(
        side=side,
        prediction=prediction,
        steps=steps,
        num_layers=info.num_layers,
        num_heads=info.num_heads,
        grid=grid,
        row_end=row_end,
        view=view,
        candidates=list(selector.candidates()) if selector is not None else [],
        token_text={i: decoder.tokenizer.decode([i]) for i in sorted(ids)},
    )
