"""A self-contained HTML page: vanilla and the recipe side by side, every image inlined.

The page loads nothing from anywhere: PNGs are embedded as base64 ``data:`` URIs and the style
sheet is inline, so the file can be mailed, attached to an issue or opened offline.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any

from PIL import Image

KINDS = {
    "attention": (
        "Attention over the image",
        "Head-mean attention of the current row over the image tokens (renormalised over the image), per "
        "block, over the picture as the model sees it, each map scaled to its own maximum; the layer the "
        "recipe chose is framed.",
    ),
    "shift": (
        "Attention shift",
        "Hellinger distance between the head-mean image attention of adjacent blocks; shaded: the "
        "selector's candidate layers; dashed: the layer it chose.",
    ),
    "heads": (
        "Head scores",
        "L2 norm of each head's pre-softmax row over the valid keys, before any filter (DualPD's "
        "head score); marks: heads the recipe's parts filtered or reweighted, as they report them.",
    ),
    "lens": (
        "Logit lens",
        "lm_head(norm(h_l)) at every layer: the probability of the token this side emitted, and the "
        "top tokens.",
    ),
    "crop": (
        "Crop and importance map",
        "What an input refiner reported: the crop box in original pixels and its importance map; dashed: the "
        "sample's target box (the object the question is about), where the dataset gives one.",
    ),
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1500px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1em; margin-bottom: 0.2em; } p.caption { color: #555; font-size: 0.85em; margin-top: 0; }
table.meta td { padding: 0.15em 0.8em 0.15em 0; vertical-align: top; }
div.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1em; align-items: start; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-weight: 600; margin-bottom: 0.3em; } .answer { font-family: monospace; font-size: 1.05em; }
.none { color: #888; font-style: italic; } pre { background: #f6f6f6; padding: 0.6em; font-size: 0.8em; }
"""


def data_uri(path: Path | None = None, image: Image.Image | None = None) -> str:
    """A ``data:image/png;base64,...`` URI of a PNG file or a PIL image."""
    if image is not None:
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        raw = buf.getvalue()
    else:
        assert path is not None
        raw = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def _figure(label: str, png: Path | None, output: Path) -> str:
    if png is None:
        return f"<figure><figcaption>{escape(label)}</figcaption><p class='none'>nothing reported</p></figure>"
    rel = png.relative_to(output).with_suffix(".json").as_posix()
    return (
        f"<figure><figcaption>{escape(label)}</figcaption><img alt='{escape(label)}' src='{data_uri(png)}'>"
        f"<p class='caption'>numbers: {escape(rel)}</p></figure>"
    )


def _token(step: dict[str, Any] | None) -> str:
    return "—" if step is None else f"{step['token_text']!r} (id {step['token']})"


def render(summary: dict[str, Any], output: Path, picture: Image.Image) -> str:
    """The page for ``summary`` (as written to summary.json); PNG paths are under ``output``."""
    sides = summary["sides"]  # {"vanilla": {...}, "recipe": {...}}
    names = list(sides)
    labels = {n: ("vanilla" if n == "vanilla" else f"recipe: {summary['recipe']}") for n in names}
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>mllm-refine inspect: {escape(summary['recipe'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>mllm-refine inspect: {escape(summary['recipe'])}</h1>",
        "<table class='meta'>",
        f"<tr><td>model</td><td>{escape(str(summary['model']))}</td></tr>",
        f"<tr><td>sample</td><td>{escape(str(summary['sample_id']))}</td></tr>",
        f"<tr><td>question</td><td>{escape(summary['question'])}</td></tr>",
    ]
    if summary.get("answers"):
        parts.append(f"<tr><td>reference</td><td>{escape(', '.join(summary['answers']))}</td></tr>")
    for n in names:
        parts.append(f"<tr><td>{escape(labels[n])}</td><td class='answer'>{escape(sides[n]['prediction'])}</td></tr>")
    for n in names:
        layer = sides[n]["choices"].get("layer")
        if layer is not None:
            parts.append(f"<tr><td>{escape(labels[n])}: chosen layer per token</td><td>{escape(str(layer))}</td></tr>")
    parts.append("</table>")
    parts.append(f"<figure><img alt='picture' style='max-width:240px' src='{data_uri(image=picture)}'></figure>")
    count = max(len(sides[n]["steps"]) for n in names)
    for i in range(count):
        steps = {n: (sides[n]["steps"][i] if i < len(sides[n]["steps"]) else None) for n in names}
        heading = "First answer token" if i == 0 else f"Answer token {i + 1}"
        tokens = "; ".join(f"{labels[n]}: {_token(steps[n])}" for n in names)
        parts.append(f"<h2>{heading}</h2><p>{escape(tokens)}</p>")
        for kind, (title, caption) in KINDS.items():
            if not any((s := steps[n]) and kind in s["png"] for n in names):
                parts.append(f"<h3>{escape(title)}</h3><p class='none'>nothing to show: no part reported it</p>")
                continue
            parts.append(f"<h3>{escape(title)}</h3><p class='caption'>{escape(caption)}</p><div class='pair'>")
            for n in names:
                files = s["png"] if (s := steps[n]) else {}
                png = output / files[kind] if files.get(kind) else None
                parts.append(_figure(labels[n], png, output))
            parts.append("</div>")
    parts.append(f"<h2>Recipe</h2><pre>{escape(summary['recipe_yaml'])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
