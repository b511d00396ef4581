"""Extra forward passes before the answer pass: the last prompt token's attention rows.

Input-level parts (ViCrop's importance maps, an attention-guided crop) look at the model once
over the whole batch before it answers. ``forward_kwargs`` builds model inputs the way
``generate`` does (positions from the attention mask), so left padding never shifts a sample and
a batch gives each sample what a batch of one would. ``RowProbe`` keeps the last query row
``(B, H, K)`` of chosen blocks; with ``grad=True`` each row is a leaf of the autograd graph and
the row's attention output is recomputed from it, so ``torch.autograd.grad(v, probe.rows[l])``
is ``dv/dA_l``. A pass that needs only the rows (``logits=False``) stops after the last block it
probes: the blocks above cannot change them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.data.sample import Sample
from mllm_refine.engine.capture import _CAPTURE_ATTR, _row_key_mask, refine_attention_on, row_output, row_scores
from mllm_refine.functional import positions
from mllm_refine.lazy import nn, torch


def forward_kwargs(model: Any, inputs: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Model kwargs for one full forward of a prepared batch, with ``generate``'s positions."""
    kwargs = dict(inputs)
    kwargs["position_ids"] = model._prepare_position_ids_for_generation(kwargs["input_ids"], kwargs)
    return kwargs


class RowProbe:
    """Keeps the last query row's post-softmax attention ``(B, H, K)`` of ``layers`` in one forward.

    Attached to attention modules like ``Capture`` (``refine_attention`` calls ``on_attention``).
    ``use`` may return an edited row (the output then comes from it), e.g. to perturb ``A``.
    """

    def __init__(self, adapter: ModelAdapter, layers: list[int], grad: bool = False) -> None:
        self.adapter = adapter
        self.layers = sorted(set(layers))
        self.grad = grad
        self.rows: dict[int, torch.Tensor] = {}  # layer -> (B, H, K)

    def owns_row(self, module: Any) -> bool:
        """Never: the passes this probe watches are prompts, whose output sdpa computes."""
        return False

    def use(self, layer: int, probs: torch.Tensor) -> torch.Tensor:
        """The row the block goes on with; the identity unless a subclass edits it."""
        return probs

    def on_attention(
        self,
        module: Any,  # the transformers attention module (``layer_idx``)
        query: torch.Tensor,  # (B, H, Q, Dh)
        key: torch.Tensor,  # (B, Hkv, K, Dh)
        value: torch.Tensor,  # (B, Hkv, K, Dh)
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        out: torch.Tensor,  # (B, Q, H, Dh)
    ) -> torch.Tensor:
        layer = module.layer_idx + 1
        if layer not in self.layers:
            return out
        B, K = query.shape[0], key.shape[2]
        scores = row_scores(query, key, scaling)  # (B, H, K)
        valid = _row_key_mask(attention_mask, B, K, query.device)  # (B, K)
        probs = torch.softmax(scores.masked_fill(~valid[:, None, :], float("-inf")), dim=-1)  # (B, H, K)
        if self.grad:
            probs = probs.detach().requires_grad_()  # a leaf: dv/dA at the model's own A
        self.rows[layer] = probs
        row = self.use(layer, probs)
        if not self.grad and row is probs:
            return out  # sdpa's output already is A @ V
        return row_output(row, value, out, query.dtype)

    @contextmanager
    def installed(self) -> Iterator["RowProbe"]:
        modules = [self.adapter.attention_module(layer) for layer in self.layers]
        if any(getattr(m, _CAPTURE_ATTR, None) is not None for m in modules):
            raise RuntimeError("RowProbe: another capture is installed on these blocks")
        try:
            with refine_attention_on(self.adapter):
                for m in modules:
                    setattr(m, _CAPTURE_ATTR, self)
                yield self
        finally:
            for m in modules:
                if getattr(m, _CAPTURE_ATTR, None) is self:
                    delattr(m, _CAPTURE_ATTR)


class _Stop(Exception):
    """Raised after the last block a rows-only pass needs; caught by ``stop_after``."""


@contextmanager
def stop_after(adapter: ModelAdapter, block: int | None) -> Iterator[None]:
    """End the language model's forward right after ``block`` (1..L); ``None`` runs it whole."""
    if block is None or block >= len(adapter.decoder_layers):
        yield
        return

    def hook(*_: Any) -> None:
        raise _Stop

    handle = adapter.decoder_layers[block - 1].register_forward_hook(hook)
    try:
        yield
    except _Stop:
        pass
    finally:
        handle.remove()


@dataclass
class PrefillPass:
    """One forward over a batch: its inputs, last-position logits and kept attention rows
    (``components.PrefillView``)."""

    inputs: Any  # the prepared batch (``pixel_values`` holds ``.grad`` after a backward)
    logits: torch.Tensor | None  # (B, V) at the last prompt position; None for a rows-only pass
    rows: dict[int, torch.Tensor]  # layer -> (B, H, K)
    image_index: torch.Tensor  # (B, I) key position of each sample's i-th image token
    image_slots: torch.Tensor  # (B, I) bool: slots that hold an image token
    adapter: ModelAdapter = field(repr=False)

    def image_grids(self) -> list[list[tuple[int, int]]]:
        """Per sample, the ``(rows, cols)`` grid of each block of its image tokens."""
        return self.adapter.image_grid(self.inputs)

    @property
    def row_end_tokens(self) -> tuple[int, ...]:
        """Per grid of one image, the extra tokens that end each of its rows."""
        return self.adapter.row_end_tokens

    def image_rows(self, layer: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, H, I)``: the row of ``layer`` (or ``rows``, e.g. its gradient) at the image tokens."""
        r = self.rows[layer] if rows is None else rows  # (B, H, K)
        index = self.image_index[:, None, :].expand(r.shape[0], r.shape[1], -1)  # (B, H, I)
        return r.gather(2, index) * self.image_slots[:, None, :]


def prefill(
    model: nn.Module,
    adapter: ModelAdapter,
    samples: list[Sample],
    layers: list[int],
    grad: bool = False,
    pixel_grad: bool = False,
    probe: RowProbe | None = None,
    logits: bool = True,
) -> PrefillPass:
    """One batched forward over ``samples`` keeping the last prompt row of ``layers``.

    ``grad``: rows are autograd leaves (see ``RowProbe``); ``pixel_grad``: ``pixel_values``
    requires grad. Either runs under ``torch.enable_grad`` so the caller can backpropagate from
    ``logits``; otherwise nothing is recorded for autograd. ``logits=False``: only the rows are
    wanted, so the forward ends after block ``max(layers)`` and ``PrefillPass.logits`` is None.
    """
    inputs = adapter.model_inputs(samples, pixel_grad=pixel_grad)
    probe = probe or RowProbe(adapter, layers, grad=grad)
    index, slots = positions(adapter.image_keys(inputs["input_ids"]))  # (B, I) each
    last = None
    upto = None if logits or not layers else max(layers)
    with torch.set_grad_enabled(grad or pixel_grad), probe.installed(), stop_after(adapter, upto):
        out = model(**forward_kwargs(model, inputs), use_cache=False, logits_to_keep=1)
        last = out.logits[:, -1]
        last = last.to(torch.promote_types(last.dtype, torch.float32))  # (B, V)
    return PrefillPass(inputs, last, probe.rows, index, slots, adapter)


__all__ = ["PrefillPass", "RowProbe", "forward_kwargs", "prefill", "stop_after"]
