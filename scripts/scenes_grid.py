"""The example grid of docs/scenes.md: the first test scenes with their questions and boxes.

    python scripts/scenes_grid.py [--output docs/scenes/examples.png] [--scenes 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from mllm_refine.data.scenes import EasyVQAScenes

BUCKET_COLOUR = {"small": (228, 0, 43), "medium": (240, 140, 0), "large": (0, 120, 60)}


def grid(n_scenes: int, scale: int = 2) -> Image.Image:
    data = EasyVQAScenes("test", n=n_scenes)
    font = ImageFont.load_default()
    by_scene: dict[int, list[int]] = {}
    for i, (k, _) in enumerate(data.rows):
        by_scene.setdefault(k, []).append(i)
    cols, line = 4, 14
    cell_w, text_h = data.scenes[0].canvas * scale, 4 * line + 6
    rows = (n_scenes + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (cell_w + 8) + 8, rows * (cell_w + text_h + 8) + 8), "white")
    for k, idx in sorted(by_scene.items()):
        samples = [data[i] for i in idx]
        picture = samples[0].images[0].resize((cell_w, cell_w), Image.NEAREST)
        draw = ImageDraw.Draw(picture)
        for s in samples:  # each question's target box, coloured by its size bucket
            if s.meta["target_box"] is not None:
                x0, y0, x1, y1 = (v * scale for v in s.meta["target_box"])
                draw.rectangle((x0 - 1, y0 - 1, x1, y1), outline=BUCKET_COLOUR[s.meta["size_bucket"]], width=2)
        x, y = 8 + (k % cols) * (cell_w + 8), 8 + (k // cols) * (cell_w + text_h + 8)
        sheet.paste(picture, (x, y))
        text = ImageDraw.Draw(sheet)
        for j, s in enumerate(samples):
            tag = s.meta["size_bucket"] or "-"
            text.text((x, y + cell_w + 4 + j * line), f"{s.question} {s.answers[0]} ({tag})", fill="black", font=font)
    legend = "boxes: target of a question; red small (< 1/64 of the image), orange medium (< 1/16), green large"
    ImageDraw.Draw(sheet).text((8, sheet.height - line), legend, fill="black", font=font)
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="docs/scenes/examples.png")
    parser.add_argument("--scenes", type=int, default=8)
    args = parser.parse_args()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(args.scenes).save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main()
