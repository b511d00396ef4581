"""DoLa, "Decoding by Contrasting Layers Improves Factuality in Large Language Models" (ICLR 2024,
arXiv 2309.03883), with the rules of Hugging Face transformers' ``generate(dola_layers=...)``
(4.43 .. 4.52), so a user who migrates sees the same tokens.

1. ``dola_jsd`` (LayerSelector): per sample, the candidate layer ``j`` whose early exit diverges
   most from the final distribution (Jensen-Shannon style, see ``layer_divergence``).
2. ``dola_contrast`` (LogitCombiner, in ``layer_contrast``: its DoLa preset):
   ``log_softmax(z_N) - log_softmax(z_j)`` on the plausible tokens
   ``log p_N >= max log p_N + log(alpha)``, ``-inf`` elsewhere. Recipes pair it with
   ``decode.repetition_penalty: 1.2``, applied to the contrasted logits.

Rules (``L`` blocks, layer ``0`` the embeddings, ``j`` the output of block ``j``):
- buckets: ``low`` = ``start, start + 2, ..`` below ``L // 2`` (just ``[start]`` when
  ``start == L // 2``), ``high`` = ``L // 2, L // 2 + 2, ..`` below ``L``; for ``L > 40``, ``low``
  stops below 20 and ``high`` starts at ``L - 20``. ``start`` is 0, or 2 when the embeddings are
  tied (1 when ``L == 2``, 0 when ``L == 1``): a tied early exit of ``h_0`` echoes the input token.
- early exits skip the final norm: ``z_j = lm_head(h_j)`` (``final_norm`` makes it a parameter).
- a sample's divergence and layer are its own. Hugging Face averages the divergence over the batch
  and contrasts every row with one layer, so its answers depend on the batch; they equal ours at
  batch size 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from mllm_refine.components import LayerSelector, ModelInfo, Needs, StepView, resolve_layers
from mllm_refine.hookspecs import hookimpl
from mllm_refine.lazy import F, torch


def dola_buckets(num_layers: int, bucket: str, tied_embeddings: bool) -> list[int]:
    """Candidate layers of DoLa's ``low`` or ``high`` bucket for a ``num_layers``-block model."""
    L = num_layers
    start = 0 if not tied_embeddings else 2 if L > 2 else 1 if L == 2 else 0
    if bucket == "low":
        if start == L // 2:
            return [start]
        return list(range(start, L // 2 if L <= 40 else 20, 2))
    if bucket == "high":
        return list(range(L // 2 if L <= 40 else L - 20, L, 2))
    raise ValueError(f"layers: {bucket!r} is not 'low', 'high' or a list of layers")


def layer_divergence(final: torch.Tensor, early: torch.Tensor, form: str = "dola") -> torch.Tensor:
    """``(B, C)`` divergence between the final distribution ``p`` (from ``final`` (B, V)) and each
    early exit ``q`` (from ``early`` (B, C, V)), with the mixture ``m = (p + q) / 2``.

    ``dola``: ``(KL(m || p) + KL(m || q)) / 2``, each KL averaged over the vocabulary instead of
    summed: the quantity Hugging Face's DoLa ranks layers by. ``js``: the textbook Jensen-Shannon
    divergence ``(KL(p || m) + KL(q || m)) / 2``.
    """
    log_p = final.log_softmax(-1)[:, None, :].expand_as(early)  # (B, C, V)
    log_q = early.log_softmax(-1)  # (B, C, V)
    m = 0.5 * (final.softmax(-1)[:, None, :] + early.softmax(-1))  # (B, C, V)
    if form == "dola":
        # kl_div(input, target) = target * (log target - input): KL from the mixture m.
        kl_p = F.kl_div(log_p, m, reduction="none").mean(-1)  # (B, C)
        kl_q = F.kl_div(log_q, m, reduction="none").mean(-1)
    elif form == "js":
        log_m = m.log()
        kl_p = F.kl_div(log_m, log_p, reduction="none", log_target=True).sum(-1)  # KL(p || m)
        kl_q = F.kl_div(log_m, log_q, reduction="none", log_target=True).sum(-1)
    else:
        raise ValueError(f"divergence: {form!r} is not 'dola' or 'js'")
    return 0.5 * (kl_p + kl_q)


@dataclass
class DolaJsdSelector(LayerSelector):
    """DoLa premature layer: per sample, the candidate whose early exit diverges most from z_N."""

    name = "dola_jsd"
    noop_params = {}  # a selector changes nothing by itself
    layers: Literal["low", "high"] | list[int] = "high"  # a bucket, or layers in 0..L-1
    tied_embeddings: bool | None = None  # None: read the model (lm_head shares the embedding weight)
    final_norm: bool = False  # DoLa reads early exits without the final norm
    divergence: Literal["dola", "js"] = "dola"  # see layer_divergence

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        L = info.num_layers
        if isinstance(self.layers, str):
            tied = info.tied_embeddings if self.tied_embeddings is None else self.tied_embeddings
            self._candidates = dola_buckets(L, self.layers, tied)
        else:
            self._candidates = resolve_layers(self.layers, L, "layers", lowest=0)
            if L in self._candidates:
                raise ValueError(f"layers: {L} is the final block itself; early exits lie in 0..{L - 1}")
        if not self._candidates:
            raise ValueError(f"layers: no candidate layer in a {L}-block model")

    def candidates(self) -> list[int]:
        return self._candidates

    def needs(self) -> Needs:
        return Needs(hidden=frozenset(self._candidates))

    def divergences(self, view: StepView) -> torch.Tensor:
        """``(B, C)``: divergence of each candidate's early exit from the final logits."""
        early = view.lenses(self._candidates, final_norm=self.final_norm)  # (B, C, V)
        return layer_divergence(view.logits, early, self.divergence)

    def select(self, view: StepView) -> torch.Tensor:
        d = self.divergences(view)  # (B, C)
        return torch.tensor(self._candidates, device=d.device)[d.argmax(1)]


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(DolaJsdSelector)  # its contrast, dola_contrast, is layer_contrast's DoLa preset
