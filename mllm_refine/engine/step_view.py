"""StepView: what the parts of one decoding step may read, computed lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mllm_refine.adapters.base import ModelAdapter
from mllm_refine.lazy import torch

if TYPE_CHECKING:  # the capture machinery imports transformers' attention code: not needed to read a view
    from mllm_refine.engine.capture import Capture


def _over_image(a: torch.Tensor) -> torch.Tensor:
    """Attention rows ``(..., I)`` renormalised to sum 1 over the image span."""
    return a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


class StepView:
    """One step of a batch: final logits, captured attention rows, and the logit lens; the
    engine's implementation of ``mllm_refine.components.StepView``.

    Layers are numbered as in ``Needs``: 0 is the embedding output, ``l`` in 1..L is block ``l``.
    Reading something no part declared raises ``KeyError`` naming the missing declaration.
    """

    def __init__(
        self, step: int, input_ids: torch.Tensor, logits: torch.Tensor, capture: Capture, adapter: ModelAdapter
    ) -> None:
        self.step = step
        self.input_ids = input_ids  # (B, T)
        self.logits = logits  # (B, V) float32, the model's own z_N
        self.capture = capture
        self.adapter = adapter
        self.num_layers = adapter.info().num_layers
        self._lens: dict[tuple[int, bool], torch.Tensor] = {}
        self._products: dict[bool, tuple[tuple[int, ...], torch.Tensor]] = {}  # final_norm -> (layers, (B, N, V)) of one lenses call

    @property
    def state(self) -> dict[str, Any]:
        """Per-request scratch shared by all parts (e.g. findings of the prefill)."""
        return self.capture.state

    @property
    def image_token_ids(self) -> tuple[int, ...]:
        """The model's image placeholder token ids (never emitted)."""
        return tuple(self.adapter.image_token_ids)

    @property
    def image_mask(self) -> torch.Tensor:
        """``(B, I)`` bool: which image slots hold a real image token of each sample."""
        return self.capture.image_slots

    @property
    def no_image(self) -> torch.Tensor | None:
        """``(B,)`` bool: the samples without an image token; None when every sample has one."""
        return self.capture.no_image

    def attention(self, layer: int, renormalize: bool = True) -> torch.Tensor:
        """``(B, H, I)``: the current row's attention over each sample's image tokens in block
        ``layer``; renormalised over the image span unless ``renormalize=False``."""
        if layer not in self.capture.attention:
            raise KeyError(f"attention of layer {layer} was not declared in Needs.attention")
        a = self.capture.attention[layer]  # (B, H, I)
        return _over_image(a) if renormalize else a

    def attentions(self, layers: list[int], renormalize: bool = True) -> torch.Tensor:
        """``(B, N, H, I)``: ``attention(l)`` of each of the N ``layers``, stacked (one
        renormalisation for all of them)."""
        a = torch.stack([self.attention(l, renormalize=False) for l in layers], dim=1)  # (B, N, H, I)
        return _over_image(a) if renormalize else a

    def branch_logits(self, name: str) -> torch.Tensor:
        """``(B, V)``: this step's final logits of the extra input ``name`` (``Needs.branches``)."""
        if name not in self.capture.branch_logits:
            raise KeyError(f"branch {name!r} was not declared in Needs.branches")
        return self.capture.branch_logits[name]

    def prefill_row(self, layer: int) -> torch.Tensor:
        """``(B, H, T)``: the last prompt token's attention over every prompt key in block ``layer``."""
        if layer not in self.capture.prefill_rows:
            raise KeyError(f"prefill row of layer {layer} was not declared in Needs.prefill_rows")
        return self.capture.prefill_rows[layer]

    def scores(self, layer: int) -> torch.Tensor:
        """``(B, H, K)``: the current row's pre-softmax scores over every key in block ``layer``,
        before any head filter acted; keys the row may not attend to (padding) hold 0."""
        if layer not in self.capture.scores:
            raise KeyError(f"pre-softmax scores of layer {layer} were not declared in Needs.scores")
        return self.capture.scores[layer]

    def hidden(self, layer: int) -> torch.Tensor:
        """``(B, D)``: residual stream ``h_layer`` at the current position."""
        if layer not in self.capture.hidden:
            raise KeyError(f"hidden state of layer {layer} was not declared in Needs.hidden")
        return self.capture.hidden[layer]

    def _project(self, h: torch.Tensor, final_norm: bool) -> torch.Tensor:
        if final_norm:
            h = self.adapter.final_norm(h)
        z = self.adapter.lm_head(h)  # (B, V)
        return z if z.dtype == torch.float32 else z.float()

    def lens(self, layer: int, final_norm: bool = True) -> torch.Tensor:
        """``(B, V)`` logit lens ``lm_head(norm(h_layer))`` (``final_norm=False``: no norm)."""
        key = (layer, final_norm)
        if key not in self._lens:
            self._lens[key] = self._project(self.hidden(layer), final_norm)
        return self._lens[key]

    def lenses(self, layers: list[int], final_norm: bool = True) -> torch.Tensor:
        """``(B, N, V)``: ``lens(l)`` of each of the N ``layers``, from one norm and one ``lm_head``
        call over the stacked states (the head's weight is read once, not N times)."""
        missing = [l for l in dict.fromkeys(layers) if (l, final_norm) not in self._lens]
        if missing:
            h = torch.stack([self.hidden(l) for l in missing], 1)  # (B, M, D)
            z = self._project(h, final_norm)  # (B, M, V)
            for i, l in enumerate(missing):
                self._lens[(l, final_norm)] = z[:, i]
            self._products[final_norm] = (tuple(missing), z)
            if missing == list(layers):  # every lens is new and in this order: the stack is z itself
                return z
        return torch.stack([self._lens[(l, final_norm)] for l in layers], 1)  # (B, N, V)

    def lens_at(self, layers: torch.Tensor, final_norm: bool = True, fill: bool = True) -> torch.Tensor:
        """``(B, V)``: each sample's lens at its own layer ``layers[b]`` (a layer of
        ``Needs.hidden``); rows with ``-1`` hold the final logits (``fill=False``: some finite
        row, for a caller that replaces those rows itself). One ``lm_head`` call for the whole
        batch, and the layers never leave the device: each row's state is picked from the stack
        of the kept ones through a (sample, layer) -> row table."""
        kept = sorted(self.capture.hidden)  # the M layers whose states this step kept
        if not kept:
            raise KeyError(f"lens_at: layers {layers.tolist()} were not declared in Needs.hidden")
        B = layers.shape[0]
        made, product = self._products.get(final_norm, ((), None))
        if product is not None and set(made) == set(kept):  # one lenses call made every lens: pick from its product
            table, samples = self._rows_of(list(made), B, layers.device, sample_major=True)  # (B, L + 2), (B,)
            z = product.reshape(B * len(made), -1).index_select(0, table[samples, layers])  # (B, V) of (B N, V)
        else:
            table, samples = self._rows_of(kept, B, layers.device)  # (B, L + 2), (B,)
            row = table[samples, layers]  # (B,) row of each sample's state in the (M B, .) stack
            if all((l, final_norm) in self._lens for l in kept):  # lenses from several calls
                z = torch.stack([self._lens[(l, final_norm)] for l in kept])  # (M, B, V)
                z = z.view(len(kept) * B, -1).index_select(0, row)  # (B, V)
            else:
                h = torch.stack([self.hidden(l) for l in kept])  # (M, B, D)
                z = self._project(h.view(len(kept) * B, -1).index_select(0, row), final_norm)  # (B, V)
        return torch.where((layers >= 0)[:, None], z, self.logits) if fill else z

    def _rows_of(
        self, kept: list[int], batch: int, device: torch.device, sample_major: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(table, samples)``, made once per request: ``table`` (B, L + 2) long holds, at
        ``[b, l]`` for ``l`` in 0..L, the row of sample ``b``'s entry for layer ``l`` in a flat
        stack of the ``kept`` ones: ``slot * B + b`` for an ``(M, B, .)`` stack, ``b * M + slot``
        for a ``(B, M, .)`` one (``sample_major``), with ``slot`` the layer's index among ``kept``;
        ``M B``, out of range (the pick raises), for a layer that was not kept. The last column,
        which ``-1`` reads, is slot 0 (those rows keep the final logits). ``samples`` is
        ``arange(B)``."""
        key = ("lens_at", tuple(kept), batch, device, sample_major)
        cached = self.capture.tables.get(key)
        if cached is None:
            M = len(kept)
            slot = torch.full((self.num_layers + 2,), M, dtype=torch.long)  # (L + 2,)
            slot[kept] = torch.arange(M)
            slot[-1] = 0
            samples = torch.arange(batch)  # (B,)
            if sample_major:
                table = torch.where(slot[None, :] < M, samples[:, None] * M + slot[None, :], M * batch)  # (B, L + 2)
            else:
                table = slot[None, :] * batch + samples[:, None]  # (B, L + 2)
            cached = self.capture.tables[key] = (table.to(device), samples.to(device))
        return cached
