"""DeCo, "MLLM Can See? Dynamic Correction Decoding for Hallucination Mitigation" (ICLR 2025,
arXiv 2410.11779): correct the final logits with the preceding layer that is most sure of one of
the final layer's candidate tokens.

1. ``deco_anchor`` (LayerSelector): the candidates ``C`` are the top-k tokens of ``softmax(z_N)``
   cut at cumulative probability ``p``; over the anchor layers,
   ``(a*, t*) = argmax over (layer a, token t in C) of softmax(z_a)[t]`` and ``p_max`` is that value.
2. ``deco_modulate`` (LogitCombiner): ``z_N + alpha * p_max * z_{a*}`` on ``C``, ``-inf`` elsewhere.

The anchor hands ``C``, ``p_max`` and ``z_{a*}`` to the combiner through the request's scratch
state (``view.state``), so the combiner works only beside ``deco_anchor`` (``Parts.check`` says so).

The defaults follow the authors' code (zjunlp/Deco, ``transformers/generation/utils.py``,
``deco_greedy_search``; other readings are one parameter away):
- anchor layers: ``early_exit_layers = range(20, 29)`` of LLaVA-1.5-7B's 32 blocks, scaled to the
  depth as ``round(20 L / 32) .. round(28 L / 32)`` (halves round up), kept within ``1..L-1``;
- the cut (``cut``) keeps the tokens up to and including the one whose cumulative probability
  reaches ``p``, as top-p sampling does (``"crossing"``, the authors' code: ``searchsorted`` of
  ``p`` in the cumulative probabilities, plus one); ``"within"`` keeps only the tokens whose
  cumulative probability, their own included, is at most ``p`` (and always the top token), under
  which a top token below ``p`` with a runner-up crossing it stays alone and DeCo cannot change
  the answer; probabilities are those of the full softmax, not renormalised over the top ``k``;
- the logit lens applies the final norm (``final_norm``), for the choice and for ``z_{a*}``;
- ties go to the lower layer, then to the more probable final token (the first maximum of the
  layer-major argmax); every step is corrected, the first one included;
- image placeholder tokens, which the engine never emits, are left out of the candidates (the
  cumulative cut runs over the probabilities of the other tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

from mllm_refine.components import LayerSelector, LogitCombiner, ModelInfo, Needs, StepView, resolve_layers
from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import torch

STATE_KEY = "deco_anchor"  # view.state entry the anchor writes each step


def default_anchor_layers(num_layers: int) -> list[int]:
    """DeCo's 20..28 of a 32-block model, scaled to ``num_layers`` blocks."""
    lo = max(1, math.floor(20 * num_layers / 32 + 0.5))
    hi = min(num_layers - 1, math.floor(28 * num_layers / 32 + 0.5))
    return list(range(lo, hi + 1)) or [max(0, num_layers - 1)]


def candidate_set(
    logits: torch.Tensor, top_k: int, top_p: float, cut: str = "crossing"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The final layer's candidates: ``(B, k)`` token ids of its top-k tokens, most probable first,
    and ``(B, k)`` bool, true for the candidates. ``cut="crossing"``: a token stays while the
    cumulative probability before it is below ``top_p``, so the token that reaches ``top_p`` stays
    too; ``"within"``: while the cumulative probability with it is at most ``top_p``. The top token
    is always a candidate."""
    probs = logits.softmax(-1)  # (B, V)
    top, ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)  # (B, k)
    total = top.cumsum(-1)  # (B, k) cumulative probability, each token's own included
    if cut == "crossing":
        before = torch.nn.functional.pad(total[:, :-1], (1, 0))  # (B, k) mass above the token
        keep = before < top_p
    else:
        keep = total <= top_p
    keep = keep & (top > 0)
    if cut != "crossing":  # crossing keeps the top token already: nothing lies above it and top_p > 0
        keep[:, 0] = True
    return ids, keep


def anchor(lens_probs: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a*, p_max)``, each ``(B,)``: the index into the ``A`` layers of ``lens_probs`` (B, A, V)
    and the probability it gives the candidate it is surest of, over the candidates (``ids``, ``keep``)."""
    B, A, _ = lens_probs.shape
    k = ids.shape[1]
    p = lens_probs.gather(2, ids[:, None, :].expand(B, A, k))  # (B, A, k)
    p = torch.where(keep[:, None, :], p, -1.0).flatten(1)  # (B, A * k), layer-major
    p_max, best = p.max(1)  # (B,) each; the first maximum: lowest layer, then most probable final token
    return best // k, p_max


@dataclass
class DecoAnchorSelector(LayerSelector):
    """DeCo anchor layer: the preceding layer surest of one of the final layer's candidate tokens."""

    name = "deco_anchor"
    noop_params = {}  # a selector changes nothing by itself
    layers: list[int] | None = None  # anchor layers; None: 20..28 of 32 scaled to the depth
    top_k: int = 20  # candidates: the top-k final tokens ...
    top_p: float = 0.9  # ... cut at cumulative probability top_p (at least the top token)
    cut: Literal["crossing", "within"] = "crossing"  # crossing: the token reaching top_p stays (authors' code)
    final_norm: bool = True  # apply the final norm in the logit lens

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        L = info.num_layers
        if self.top_k < 1:
            raise ValueError(f"top_k: {self.top_k} must be at least 1")
        if self.cut not in ("crossing", "within"):
            raise ValueError(f"cut: {self.cut!r} is neither 'crossing' nor 'within'")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: {self.top_p} is outside (0, 1]")
        self._layers = resolve_layers(self.layers or default_anchor_layers(L), L, "layers", lowest=0)
        if L in self._layers and L > 0:
            raise ValueError(f"layers: the anchor must precede the final block {L}")

    def candidates(self) -> list[int]:
        return self._layers

    def needs(self) -> Needs:
        return Needs(hidden=frozenset(self._layers))

    def _constants(self, view: StepView) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(placeholders, layers, starts)`` long tensors on the logits' device, made once per
        device and batch size; ``starts`` (B,) is each sample's first row in a ``(B A, V)`` view
        of the lenses."""
        device, B = view.logits.device, view.logits.shape[0]
        if getattr(self, "_made_for", None) != (device, B):
            self._placeholders = torch.tensor(view.image_token_ids, dtype=torch.long, device=device)
            self._layer_ids = torch.tensor(self._layers, device=device)  # (A,)
            self._starts = torch.arange(B, device=device) * len(self._layers)  # (B,)
            self._made_for = (device, B)
        return self._placeholders, self._layer_ids, self._starts

    def select(self, view: StepView) -> torch.Tensor:
        placeholders, layer_ids, starts = self._constants(view)
        # Image placeholders are never emitted (the engine suppresses them): they are no candidates.
        final = view.logits.index_fill(1, placeholders, float("-inf"))  # (B, V)
        ids, keep = candidate_set(final, self.top_k, self.top_p, self.cut)  # (B, k) each
        lens = view.lenses(self._layers, final_norm=self.final_norm)  # (B, A, V)
        a, p_max = anchor(lens.softmax(-1), ids, keep)  # (B,) each
        B, A, V = lens.shape
        view.state[STATE_KEY] = {
            "step": view.step,
            "p_max": p_max,  # (B,)
            "candidates": torch.zeros_like(view.logits, dtype=torch.bool).scatter_(1, ids, keep),  # (B, V)
            "anchor_logits": lens.reshape(B * A, V).index_select(0, starts + a),  # (B, V) z_{a*}
        }
        return layer_ids[a]  # (B,)


@dataclass
class DecoModulateCombiner(LogitCombiner):
    """DeCo soft modulation: ``z_N + alpha * p_max * z_anchor`` on the candidates, -inf elsewhere."""

    name = "deco_modulate"
    noop_params = {"alpha": 0.0}  # candidates keep z_N: greedy picks the top token
    alpha: float = 0.6  # the paper's range is 0.1 .. 0.6

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        if self.alpha < 0:
            raise ValueError(f"alpha: {self.alpha} must be >= 0")

    def conflicts(self, parts: Any) -> str | None:
        if not isinstance(parts.layer_selector, DecoAnchorSelector):
            return "it reads the anchor's p_max and candidate set each step: use layer_selector 'deco_anchor'"
        return None

    def combine(self, view: StepView, layer: torch.Tensor | None) -> torch.Tensor:
        final = view.logits  # (B, V)
        found = view.state.get(STATE_KEY)
        if layer is None or found is None or found["step"] != view.step:
            raise RuntimeError("deco_modulate: no anchor at this step; pair it with layer_selector 'deco_anchor'")
        z = final + self.alpha * found["p_max"][:, None] * found["anchor_logits"]  # (B, V)
        # deco_anchor picks a layer for every sample (no -1 rows): nothing keeps z_N.
        return z.masked_fill_(~found["candidates"], float("-inf"))


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(DecoAnchorSelector)
    register(DecoModulateCombiner)
