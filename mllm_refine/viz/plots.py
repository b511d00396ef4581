"""PNG plots of the numbers in ``viz.numbers`` (matplotlib, an optional extra).

Figures are built with matplotlib's object API (``Figure``), never ``pyplot``, so no global
backend or state is touched in the caller's process.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image

HINT = "matplotlib is needed for inspect plots: pip install matplotlib  (or: pip install 'mllm-refine[viz]')"
MARK = "#e4002b"
TARGET = "#00b3ff"
MARKERS = ("x", "o", "s", "^", "D")


class VizUnavailable(ValueError):
    """matplotlib is not installed; the message is a one-line hint."""


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise VizUnavailable(HINT) from e


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100, facecolor="white")
    return path


def _lines(title: str) -> str:
    """Titles are "what; which side and token": one line each, so narrow figures keep them."""
    return title.replace("; ", "\n")


def _short(text: str, n: int = 10) -> str:
    text = text.replace("\n", "\\n").replace("$", r"\$")
    return text if len(text) <= n else text[: n - 1] + "…"


def plot_attention(numbers: dict[str, Any], view: Image.Image | None, path: Path, title: str = "") -> Path:
    """A grid of heat maps, one per block, over the picture as the model sees it."""
    layers, maps = numbers["layers"], numbers["maps"]
    panels = len(layers) + (view is not None)
    cols = min(panels, 8)
    rows = math.ceil(panels / cols)
    fig = _figure(1.7 * cols, 1.85 * rows + 0.4)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    marked = set(numbers["marked"])
    for ax in axes:
        ax.set_axis_off()
    if view is not None:  # the picture itself, then each block's map over a grey copy of it
        axes[0].imshow(view)
        axes[0].set_title("model input", fontsize=9)
        axes = axes[1:]
        grey = view.convert("L")
    for ax, layer, grid, vector in zip(axes, layers, maps, numbers["head_mean"]):
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        if grid is not None and view is not None:
            w, h = view.size
            ax.imshow(grey, cmap="gray", extent=(0, w, h, 0))
            ax.imshow(grid, cmap="inferno", alpha=0.6, extent=(0, w, h, 0), interpolation="nearest")
        else:
            ax.imshow([vector], cmap="inferno", aspect="auto", interpolation="nearest")
        chosen = layer in marked
        ax.set_title(f"L{layer}" + (" (chosen)" if chosen else ""), fontsize=9, color=MARK if chosen else "black")
        for spine in ax.spines.values():
            spine.set_edgecolor(MARK if chosen else "#888888")
            spine.set_linewidth(3 if chosen else 0.5)
    fig.suptitle(_lines(title or "head-mean attention over the image, per block (each map scaled to its own max)"), fontsize=10)
    return _save(fig, path)


def plot_shift(numbers: dict[str, Any], path: Path, title: str = "") -> Path:
    """The Hellinger attention shift between adjacent blocks, with the candidates and the choice."""
    fig = _figure(6.0, 3.2)
    ax = fig.subplots()
    layers, shift = numbers["layers"], numbers["shift"]
    ax.plot(layers, shift, marker="o", color="#1f5fa8", label="shift s_l = H(A_{l-1}, A_l)")
    if numbers["candidates"]:
        lo, hi = min(numbers["candidates"]), max(numbers["candidates"])
        ax.axvspan(lo - 0.5, hi + 0.5, color="#1f5fa8", alpha=0.08, label="candidate layers")
    for key, layer in numbers["chosen"].items():
        ax.axvline(layer, color=MARK, linestyle="--", label=f"chosen ({key}): {layer}")
    ax.set_xlabel("block l")
    ax.set_ylabel("Hellinger shift")
    ax.set_xticks(layers)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title(_lines(title or "attention shift between adjacent blocks"), fontsize=10)
    return _save(fig, path)


def plot_heads(numbers: dict[str, Any], path: Path, title: str = "") -> Path:
    """Layer x head map of pre-softmax row norms; heads a part filtered or reweighted marked."""
    layers, heads = numbers["layers"], numbers["heads"]
    fig = _figure(min(max(5.0, 1.6 + 0.28 * heads), 12.0), min(max(3.2, 1.6 + 0.24 * len(layers)), 12.0))
    ax = fig.subplots()
    im = ax.imshow(numbers["norm"], cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="L2 norm of pre-softmax row")
    for i, (key, marked) in enumerate(numbers["marked"].items()):
        xs = [h for layer, hs in marked.items() for h in hs]
        ys = [layers.index(int(layer)) for layer, hs in marked.items() for _ in hs if int(layer) in layers]
        ax.scatter(xs, ys, marker=MARKERS[i % len(MARKERS)], color=MARK, s=36, label=key)
    if numbers["marked"]:
        fig.legend(fontsize=8, loc="outside lower center", ncols=2)
    ax.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=7)
    ax.set_xticks(range(heads), [str(h) for h in range(heads)], fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("block")
    ax.set_title(_lines(title or "head scores (before any filter)"), fontsize=10)
    return _save(fig, path)


def plot_lens(numbers: dict[str, Any], path: Path, title: str = "") -> Path:
    """Probability of the emitted token per layer, and each layer's top tokens."""
    layers, top = numbers["layers"], numbers["top"]
    k = len(top[0]) if top else 0
    fig = _figure(4.0 + 1.25 * k, 1.2 + 0.26 * len(layers))
    left, right = fig.subplots(1, 2, width_ratios=[1.0, max(k, 1) * 0.45])
    left.plot(numbers["p_token"], layers, marker="o", color="#1f5fa8")
    left.axvline(numbers["final"]["p_token"], color="#888888", linestyle=":", label="final z_N")
    left.axvline(numbers["decoded"]["p_token"], color="#2a9d3a", linestyle="-.", label="decoded (after parts)")
    for key, layer in numbers["chosen"].items():
        left.axhline(layer, color=MARK, linestyle="--", label=f"chosen ({key})")
    top_p = max([*numbers["p_token"], numbers["final"]["p_token"], numbers["decoded"]["p_token"]])
    left.set_xlim(0, min(1.0, max(0.02, 1.15 * top_p)))
    left.set_ylim(layers[-1] + 0.5, layers[0] - 0.5)
    left.set_yticks(layers)
    left.set_ylabel("layer (0 = embeddings)")
    left.set_xlabel(f"p({_short(numbers['token_text'], 14)!r})")
    left.legend(fontsize=7)
    probs = [[t["p"] for t in row] for row in top]
    right.imshow(probs, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for y, row in enumerate(top):
        for x, t in enumerate(row):
            colour = "white" if t["p"] > 0.6 else "black"
            right.text(x, y, f"{_short(t['text'])}\n{t['p']:.2f}", ha="center", va="center", fontsize=6.5, color=colour)
    right.set_xticks(range(k), [f"top {i + 1}" for i in range(k)], fontsize=7)
    right.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=7)
    fig.suptitle(_lines(title or "logit lens"), fontsize=10)
    return _save(fig, path)


def plot_crop(numbers: dict[str, Any], image: Image.Image, path: Path, title: str = "") -> Path | None:
    """The importance map over the original picture, the crop box and the sample's target box
    (dashed); None when none exists."""
    box, grid, target = numbers["box"], numbers["map"], numbers.get("target")
    if box is None and grid is None and target is None:
        return None
    from matplotlib.patches import Rectangle

    w, h = image.size
    fig = _figure(4.2, 4.2 * h / max(w, 1) + 0.5)
    ax = fig.subplots()
    ax.imshow(image, extent=(0, w, h, 0))
    if grid is not None:
        ax.imshow(grid, cmap="inferno", alpha=0.55, extent=(0, w, h, 0), interpolation="nearest")
    if box is not None:
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=MARK, linewidth=2.5, label="crop"))
    if target is not None:
        x0, y0, x1, y1 = target
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=TARGET, linewidth=2, linestyle="--",
                               label="target"))  # fmt: skip
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_title(_lines(title or "input refiner: importance map and crop box"), fontsize=10)
    return _save(fig, path)
