"""Training steps of the Qwen2.5-VL embedded model's build (driven by
``scripts/build_embedded_qwen.py``), on the easy-VQA scenes train split.

Stage 1 trains the vision tower and merger alone: every merged token must name the colour and
shape of the object its cell shows, or background (``scenes.cell_labels``), so image features
stay local to their cell. Stage 2 trains on the questions (answer word + EOS), SmolLM2 frozen
with LoRA factors on its attention, the stage-1 loss kept at a weight. Both stages checkpoint
every few steps and resume from the last checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mllm_refine.data import easy_vqa, scenes

TYPES = easy_vqa.QUESTION_TYPES  # yes_no, colour, shape
COLOURS, SHAPES = easy_vqa.COLOURS, easy_vqa.SHAPES
KEEP = 4  # logits kept at the end of a sequence: the longest answer is 2 tokens + EOS


@dataclass
class Questions:
    """The questions of some scenes, with what training reads of each."""

    data: scenes.EasyVQAScenes
    qtype: torch.Tensor  # (Q,) index into TYPES

    @classmethod
    def of(cls, split: str, n: int, seed: int, prior: float | None = None) -> "Questions":
        data = scenes.EasyVQAScenes(split, n=n, seed=seed, prior=prior)
        qtype = torch.tensor([TYPES.index(easy_vqa.answer_type(q.answer)) for _, q in data.rows])
        return cls(data, qtype)

    def scene(self, row: int) -> scenes.Scene:
        return self.data.scenes[self.data.rows[row][0]]


def prompt(processor: Any, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def make_batch(processor: Any, qs: Questions, rows: list[int]) -> dict[str, torch.Tensor]:
    """Left-padded prompt + answer + EOS with pixels, as the model sees them at generation time,
    and ``targets`` (B, KEEP): the answer tokens and EOS as the last positions' next tokens
    (-100 elsewhere)."""
    tok = processor.tokenizer
    eos = tok.eos_token
    texts, n_answer = [], []
    for r in rows:
        _, q = qs.data.rows[r]
        texts.append(prompt(processor, q.text) + q.answer + eos)
        n_answer.append(len(tok(q.answer + eos, add_special_tokens=False)["input_ids"]))
    images = [scenes.rendered(qs.scene(r)) for r in rows]
    batch = dict(processor(images=images, text=texts, padding=True, return_tensors="pt"))
    ids = batch["input_ids"]  # (B, L), left-padded: every answer ends the row
    targets = torch.full((len(rows), KEEP), -100)
    for b, n in enumerate(n_answer):
        targets[b, KEEP - n :] = ids[b, -n:]
    batch["targets"] = targets
    return batch


def cell_targets(scene_list: list[scenes.Scene], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(colour, shape)`` labels of every merged token, (B * G * G,) each, row-major per image:
    the shown object's colour (shape) index, or ``len(COLOURS)`` (``len(SHAPES)``) for background."""
    colour, shape = [], []
    for s in scene_list:
        cells = scenes.cell_labels(s, grid).reshape(-1)  # (G * G,) object index or -1
        colour += [COLOURS.index(s.objects[k].colour) if k >= 0 else len(COLOURS) for k in cells]
        shape += [SHAPES.index(s.objects[k].shape) if k >= 0 else len(SHAPES) for k in cells]
    return torch.tensor(colour), torch.tensor(shape)


def target_boxes(qs: Questions, rows: list[int]) -> list[list[int] | None]:
    """Each question's target box ``[x0, y0, x1, y1]`` in canvas pixels (None without a target)."""
    return [scenes.target_meta(qs.scene(r), qs.data.rows[r][1].target)["target_box"] for r in rows]


def word_embeddings(model: Any, tokenizer: Any, words: list[str]) -> torch.Tensor:
    """(W, D): each word's input embedding, the mean over its tokens when it has several."""
    table = model.get_input_embeddings().weight.detach()  # (V, D)
    return torch.stack([table[tokenizer(w, add_special_tokens=False)["input_ids"]].mean(0) for w in words])


class CellHead(nn.Module):
    """What every merged token is trained to say about its cell: a throw-away linear read-out of
    the colour and shape of the object it shows (background included), and closeness to the
    language model's own embeddings of those two words (of "background" for a background cell),
    so that the frozen language model finds a "red" cell as it finds the word "red"."""

    def __init__(self, dim: int, colour_words: torch.Tensor, shape_words: torch.Tensor, ground_weight: float = 1.0) -> None:
        super().__init__()
        self.colour = nn.Linear(dim, len(COLOURS) + 1)
        self.shape = nn.Linear(dim, len(SHAPES) + 1)
        self.colour_words: torch.Tensor
        self.shape_words: torch.Tensor
        self.register_buffer("colour_words", colour_words)  # (C + 1, D), the last row "background"
        self.register_buffer("shape_words", shape_words)  # (S + 1, D), the last row "background"
        self.ground_weight = ground_weight

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, ground_weight: float = 1.0) -> "CellHead":
        return cls(
            model.config.text_config.hidden_size,
            word_embeddings(model, tokenizer, [*COLOURS, "background"]),
            word_embeddings(model, tokenizer, [*SHAPES, "background"]),
            ground_weight,
        )

    def loss(self, feats: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        # feats (N, D): one row per merged token; object cells weigh 4x the (far more) background ones
        feats = feats.float()
        weight_c = torch.ones(len(COLOURS) + 1)
        weight_c[:-1] = 4.0
        weight_s = torch.ones(len(SHAPES) + 1)
        weight_s[:-1] = 4.0
        ce = nn.functional.cross_entropy
        loss = ce(self.colour(feats), colour, weight=weight_c) + ce(self.shape(feats), shape, weight=weight_s)
        if self.ground_weight > 0:
            target = (self.colour_words[colour] + self.shape_words[shape]) / 2  # (N, D)
            loss = loss + self.ground_weight * ((feats - target) ** 2).mean() / (target**2).mean()
        return loss


def merged_features(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The merger's output, one row per merged token, images in order, cells row-major: (N, D)."""
    out = model.model.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
    return out.pooler_output


def answer_logits(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits of the last KEEP positions before the end, (B, KEEP, V), and the merged
    image features (N, D) they were computed from."""
    feats = merged_features(model, batch)  # (N, D)
    ids = batch["input_ids"]  # (B, L)
    embeds = model.get_input_embeddings()(ids)  # (B, L, D)
    is_image = (ids == model.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(is_image, feats.to(embeds.dtype))
    # M-RoPE positions: (t, h, w) of each image token, one shared position per text token
    position_ids, _ = model.model.get_rope_index(
        ids, mm_token_type_ids=batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"],
    )  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.model.language_model(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=position_ids, use_cache=False
        ).last_hidden_state[:, -KEEP - 1 : -1]  # (B, KEEP, D): positions that predict the last KEEP tokens
        logits = model.lm_head(hidden)
    return logits.float(), feats


def answer_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) True where every answer token and the EOS is the argmax (teacher forced)."""
    return ((logits.argmax(-1) == targets) | (targets == -100)).all(-1)


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def sample_rows(qs: Questions, batch: int, gen: torch.Generator) -> list[int]:
    """Question rows with the three answer types drawn equally often (the scenes' yes/no
    questions are balanced yes/no already)."""
    pools = [torch.nonzero(qs.qtype == t).squeeze(1) for t in range(len(TYPES))]
    types = torch.randint(0, len(TYPES), (batch,), generator=gen).tolist()
    return [int(pools[t][torch.randint(0, len(pools[t]), (1,), generator=gen)]) for t in types]


class Checkpoints:
    """One file per stage in ``folder``: what is trained, the optimiser, the step and the
    generator, so a stopped build resumes where it was and ends with the same weights."""

    def __init__(self, folder: Path, every: int) -> None:
        self.folder, self.every = folder, every
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str) -> Path:
        return self.folder / f"{stage}.pt"

    def save(self, stage: str, step: int, modules: dict[str, nn.Module], opt: Any, gen: torch.Generator) -> None:
        state = {"step": step, "gen": gen.get_state(), "opt": opt.state_dict()}
        state.update({f"module.{k}": m.state_dict() for k, m in modules.items()})
        tmp = self.path(stage).with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path(stage))  # whole or not at all

    def load(self, stage: str, modules: dict[str, nn.Module], opt: Any, gen: torch.Generator) -> int:
        """The step to continue from (0 when there is no checkpoint)."""
        path = self.path(stage)
        if not path.is_file():
            return 0
        state = torch.load(path, weights_only=True)
        for k, m in modules.items():
            m.load_state_dict(state[f"module.{k}"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        return int(state["step"])


def run_stage(
    stage: str, model: Any, modules: dict[str, nn.Module], groups: list[dict[str, Any]], steps: int,
    loss_of: Callable[[int], torch.Tensor], gen: torch.Generator, ckpt: Checkpoints, log: Callable[[str], None],
    every: Callable[[int], None] | None = None,
) -> None:  # fmt: skip
    """``steps`` AdamW steps of ``loss_of(step)`` under a cosine schedule, resumed from and saved
    to ``ckpt``; ``every(step)`` runs after each checkpoint (validation)."""
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    start = ckpt.load(stage, modules, opt, gen)
    if start:
        log(f"{stage}: resumed at step {start}")
    if start >= steps:
        return
    for g in opt.param_groups:
        g.setdefault("initial_lr", g["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, max(1, steps // 20)), last_epoch=start - 1)
    params = [p for g in groups for p in g["params"]]
    model.train()
    running = None
    for step in range(start, steps):
        loss = loss_of(step)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        done = step + 1
        if done % 10 == 0:
            log(f"{stage} step {done}/{steps} loss {running:.3f}")
        if done % ckpt.every == 0 or done == steps:
            ckpt.save(stage, done, modules, opt, gen)
            if every is not None:
                every(done)
                model.train()


@torch.no_grad()
def validate(model: Any, processor: Any, qs: Questions, rows: list[int], batch: int = 32) -> dict[str, float]:
    """Teacher-forced exact-answer rate per answer type and per target size bucket."""
    model.eval()
    hits = []
    for start in range(0, len(rows), batch):
        b = make_batch(processor, qs, rows[start : start + batch])
        logits, _ = answer_logits(model, b)
        hits += answer_correct(logits, b["targets"]).tolist()
    out: dict[str, list[bool]] = {"overall": hits}
    for r, hit in zip(rows, hits):
        sample_type = TYPES[int(qs.qtype[r])]
        out.setdefault(sample_type, []).append(hit)
        _, q = qs.data.rows[r]
        meta = scenes.target_meta(qs.scene(r), q.target)
        if meta["size_bucket"]:
            out.setdefault(meta["size_bucket"], []).append(hit)
    return {k: float(np.mean(v)) for k, v in out.items()}
