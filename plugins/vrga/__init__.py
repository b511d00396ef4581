"""VRGA, "Deeper Thought, Weaker Aim" (arXiv 2603.14184): visual region-guided attention.

Long answers drift away from the image region the question is about. VRGA finds that region
once, from the prefill, and keeps pulling the visually engaged heads back to it at every later
step. The defaults follow the authors' code (Ivine11/VRGA, ``models/modeling_qwen2_5_vl.py``:
``Qwen2_5_VLTextModel.forward`` analyses, ``Qwen2_5_VLAttention.forward`` reweights); each other
reading is one parameter away (docs/methods/vrga.md has the table).

At prefill, for every (block, head), the attention row ``a`` of one prompt token over its keys
(``row``; default the token before the question's last token, as the code's ``q_end_pos - 1``):
    R   = mean(a on image) / mean(a on all valid keys)       how much the head looks at the image
    H   = entropy(a on image, renormalised)                  how spread that look is
    EFR = H / R
    visual heads:     EFR <= its ``visual_q`` quantile and R >= its ``ratio_q`` quantile, over all
                      (block, head) of the sample (none: R >= the ``ratio_q`` quantile alone)
    background heads: R < ``background_r`` among the first ``round(background_share * L * H)``
                      pairs in block-major order. The code takes the first 63 pairs (``i < 64``
                      after ``i += 1``) on Qwen2.5-VL-7B's 28 x 28; 63 / 784 keeps that share on
                      other shapes. ``background_share: null``: every head of the ``early`` blocks.
    A_ref = relu(norm(mean of visual maps) - norm(mean of background maps)), (B, I); a head's
            map is its row's image probabilities as they are (``maps: raw``, the code) or
            renormalised over the image (``renorm``)
    sinks: (``sinks: edge``, the code) a fixed edge mask of the first grid, laid over the code's
           region, which starts ``lead`` tokens before the image: the top-left 2 x 2 cells, the
           rest of the first row, the rest of the first column, at most ``int(edge_cap * (n +
           lead))`` of them. With ``lead = 1`` that is, in the image's own cells, the first row,
           the first cell of the second row and the last column down to the next-to-last row.
           ``sinks: mean``: tokens whose mean map over all heads exceeds ``sink / n``.
    focus tokens: score = A_ref over its mean on the unmasked tokens (masked tokens: -1e9);
           focus = score > mean + ``focus_std`` * std (Bessel std), else the ``min_focus``
           largest when fewer pass. ``focus_rule: paper`` takes mean and std over the unmasked
           tokens. ``focus_rule: code`` takes them where the code does: it indexes with ``~``
           of the masked positions' index tensor, which is ``-k - 1``, so it reads the scores at
           the region's mirror positions ``V - 1 - k`` (``V = n + lead``). On large grids the
           first column's mirrors are the first column itself, masked at -1e9: with a quarter
           or more of the picks masked the threshold falls far below 0 and every unmasked token
           is a focus token; with few masked picks it rises far above every score and the
           ``min_focus`` largest win; a single pick gives a NaN std and the largest again.
    boosted keys: each focus token at region position ``skip`` or later (lead counted: the code
           skips ``idx < 3``) and the tokens within ``radius`` of it along the image-token
           sequence (``neighbours: sequence``, the code) or in a grid square (``grid``).
At each later step, in every head whose current row has R > ``engaged_r`` and
R > ``engaged_h`` * H, with H the entropy of the image probabilities as they are
(``engaged_entropy: raw``, the code) or renormalised (``renorm``), the probabilities at the
boosted keys are multiplied by ``1 + gamma``; the row is renormalised.

The first answer token comes from the prefill, unboosted, as in the code (its attention edits
only rows of one query, ``q == 1``). The analysis needs every block's row, so it runs in the
last block of the prefill pass; ``row: code`` and ``question`` rows come from
``Needs.question_rows`` (one extra eager row per block at prefill, no extra pass).

Not reproduced: the code's image region also holds the ``<|vision_start|>`` token (in R, H,
the maps and the decode-time test); here the region is the image tokens alone, and ``lead``
only shifts the edge mask and the skip by it.
"""

from __future__ import annotations

from typing import Callable

from mllm_refine.hookspecs import hookimpl
from mllm_refine_plugins.vrga.filter import BACKGROUND_SHARE, VRGAFilter
from mllm_refine_plugins.vrga.region import (
    dilate,
    edge_candidates,
    edge_mask,
    focus_tokens,
    grid_cells,
    reference_map,
    sequence_neighbours,
)
from mllm_refine_plugins.vrga.stats import background_pool, engaged_heads, row_stats, select_heads


@hookimpl
def register_components(register: Callable[[type], None]) -> None:
    register(VRGAFilter)


__all__ = [
    "BACKGROUND_SHARE",
    "VRGAFilter",
    "background_pool",
    "dilate",
    "edge_candidates",
    "edge_mask",
    "engaged_heads",
    "focus_tokens",
    "grid_cells",
    "reference_map",
    "row_stats",
    "select_heads",
    "sequence_neighbours",
]
