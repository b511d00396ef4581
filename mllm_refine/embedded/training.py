"""Training steps of the embedded model's build (driven by ``scripts/build_embedded.py``).

Stage 1 trains the vision tower alone to name each image's colour and shape from every one of its
patch tokens (labels recovered from the image's own questions). Stage 2 trains the whole LLaVA
on the questions (answer word + EOS) with the same auxiliary loss kept on, the projector and
LoRA factors on the frozen language model learning to read the image tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from mllm_refine.data import easy_vqa

TYPES = easy_vqa.QUESTION_TYPES  # yes_no, colour, shape
N_COLOURS, N_SHAPES = len(easy_vqa.COLOURS), len(easy_vqa.SHAPES)


@dataclass
class Split:
    images: torch.Tensor  # (I, 3, 64, 64) uint8
    colour: torch.Tensor  # (I,) colour index, -100 where the questions do not tell
    shape: torch.Tensor  # (I,) shape index, -100 where unknown
    prompt_ids: list[list[int]]  # chat prompt with the image tokens expanded
    answer_ids: list[list[int]]  # answer tokens + EOS
    image_row: torch.Tensor  # (Q,) row of each question's image in ``images``
    qtype: torch.Tensor  # (Q,) index into TYPES
    yes: torch.Tensor  # (Q,) bool: the answer is "yes"


def load_split(processor: Any, keep_image: Callable[[int], bool], split: str = "train") -> Split:
    tok = processor.tokenizer
    rows = [(q, a, i) for q, a, i in easy_vqa.questions(split) if keep_image(i)]
    ids = sorted({i for _, _, i in rows})
    row_of = {i: n for n, i in enumerate(ids)}
    images = np.stack([np.asarray(easy_vqa.load_image(split, i)) for i in ids])  # (I, 64, 64, 3)
    labels = easy_vqa.image_labels(split)
    colour = [easy_vqa.COLOURS.index(labels[i]["colour"]) if "colour" in labels[i] else -100 for i in ids]
    shape = [easy_vqa.SHAPES.index(labels[i]["shape"]) if "shape" in labels[i] else -100 for i in ids]
    n_image_tokens = processor.num_additional_image_tokens - 1 + (images.shape[1] // processor.patch_size) ** 2
    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}], add_generation_prompt=True
        ).replace(processor.image_token, processor.image_token * n_image_tokens)
        for q, _, _ in rows
    ]
    prompt_ids = tok(prompts)["input_ids"]
    answers = sorted({a for _, a, _ in rows})
    answer_tok = dict(zip(answers, tok(answers, add_special_tokens=False)["input_ids"]))
    return Split(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        colour=torch.tensor(colour),
        shape=torch.tensor(shape),
        prompt_ids=prompt_ids,
        answer_ids=[answer_tok[a] + [tok.eos_token_id] for _, a, _ in rows],
        image_row=torch.tensor([row_of[i] for _, _, i in rows]),
        qtype=torch.tensor([TYPES.index(easy_vqa.answer_type(a)) for _, a, _ in rows]),
        yes=torch.tensor([a == "yes" for _, a, _ in rows]),
    )


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> the processor's pixel values (mean 0.5, std 0.5)."""
    return (images.float() / 255.0 - 0.5) / 0.5


def augment(images: torch.Tensor, gen: torch.Generator, shift: int = 4) -> torch.Tensor:
    """Horizontal flips and shifts of up to ``shift`` px (edge-replicated): the shapes' classes
    survive both (triangles stay upright)."""
    b, _, h, w = images.shape
    x = images.float()
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = nn.functional.pad(x, (shift,) * 4, mode="replicate")  # (B, 3, H + 2s, W + 2s)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=gen).tolist()
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=gen).tolist()
    return torch.stack([padded[k, :, dy[k] : dy[k] + h, dx[k] : dx[k] + w] for k in range(b)])


def aux_loss(head: nn.Module, feats: torch.Tensor, colour: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Every patch token (B, N, D) must name its image's colour and shape."""
    logits = head(feats.float())  # (B, N, 8 + 3)
    n = logits.shape[1]
    ce = nn.functional.cross_entropy
    return ce(logits[..., :N_COLOURS].reshape(-1, N_COLOURS), colour.repeat_interleave(n), ignore_index=-100) + ce(
        logits[..., N_COLOURS:].reshape(-1, N_SHAPES), shape.repeat_interleave(n), ignore_index=-100
    )


def vision_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """What LLaVA feeds its projector: last layer, CLS dropped. (B, N, D)"""
    return model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-1][:, 1:]


def cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def pretrain_vision(model: Any, head: nn.Module, data: Split, steps: int, batch: int, lr: float, gen: torch.Generator, log: Callable[[str], None]) -> None:
    params = list(model.model.vision_tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, steps // 10))
    for step in range(steps):
        rows = torch.randint(0, data.images.shape[0], (batch,), generator=gen)
        feats = vision_features(model, normalize(augment(data.images[rows], gen)))
        loss = aux_loss(head, feats, data.colour[rows], data.shape[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"vision step {step + 1}/{steps} loss {loss.item():.3f}")


def sample_questions(
    data: Split, batch: int, type_weights: tuple[float, ...], gen: torch.Generator, balance_yes_no: bool = False
) -> torch.Tensor:
    """Question rows with answer types drawn by ``type_weights`` (74 % of the questions are
    yes/no; without rebalancing the open questions lag far behind). ``balance_yes_no`` draws
    "yes" and "no" equally often: 87 % of the colour yes/no questions are answered by their
    template alone, a shortcut that otherwise keeps yes/no accuracy near that prior."""
    pools = [torch.nonzero(data.qtype == t).squeeze(1) for t in range(len(TYPES))]
    if balance_yes_no:
        yes_no = TYPES.index("yes_no")
        pools[yes_no : yes_no + 1] = [torch.nonzero((data.qtype == yes_no) & (data.yes == v)).squeeze(1) for v in (True, False)]
        weights = list(type_weights)
        weights[yes_no : yes_no + 1] = [type_weights[yes_no] / 2] * 2
        type_weights = tuple(weights)
    types = torch.multinomial(torch.tensor(type_weights), batch, replacement=True, generator=gen)
    return torch.stack([pools[t][torch.randint(0, len(pools[t]), (1,), generator=gen)][0] for t in types.tolist()])


def make_batch(data: Split, rows: torch.Tensor, pad_id: int, keep: int) -> dict[str, torch.Tensor]:
    """Left-padded prompt + answer, as the model sees them at generation time; ``targets`` (B, keep)
    holds the next token for each of the last ``keep`` positions (-100 outside the answer)."""
    seqs = [data.prompt_ids[r] + data.answer_ids[r] for r in rows.tolist()]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    targets = torch.full((len(seqs), keep), -100)
    for b, (s, r) in enumerate(zip(seqs, rows.tolist())):
        ids[b, length - len(s) :] = torch.tensor(s)
        mask[b, length - len(s) :] = 1
        n = len(data.answer_ids[r])  # answer + EOS, predicted from the n positions before them
        targets[b, keep - 1 - n : keep - 1] = torch.tensor(data.answer_ids[r])
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)  # as generate() derives them
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids, "targets": targets}


def answer_logits(model: Any, batch: dict[str, torch.Tensor], pixel_values: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the last ``keep`` positions (B, keep, V) and the vision features (B, N, D)."""
    feats = vision_features(model, pixel_values)
    image_embeds = model.model.multi_modal_projector(feats)  # (B, N, H)
    embeds = model.get_input_embeddings()(batch["input_ids"])  # (B, L, H)
    is_image = (batch["input_ids"] == model.config.image_token_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(is_image, image_embeds.to(embeds.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.model.language_model(
            inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=batch["position_ids"], use_cache=False
        ).last_hidden_state[:, -keep:]
        logits = model.lm_head(hidden)
    return logits.float(), feats


def answer_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) True where every answer token and the EOS is the argmax (teacher forced)."""
    hit = (logits.argmax(-1) == targets) | (targets == -100)
    return hit.all(-1)


@torch.no_grad()
def validate(model: Any, data: Split, rows: torch.Tensor, pad_id: int, keep: int, batch: int = 64) -> dict[str, float]:
    """Teacher-forced exact-answer rate per answer type on ``rows`` of ``data``."""
    model.eval()
    hits = torch.zeros(len(rows), dtype=torch.bool)
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        b = make_batch(data, chunk, pad_id, keep)
        logits, _ = answer_logits(model, b, normalize(data.images[data.image_row[chunk]]), keep)
        hits[start : start + batch] = answer_correct(logits, b["targets"])
    model.train()
    qtype = data.qtype[rows]
    out = {t: hits[qtype == k].float().mean().item() for k, t in enumerate(TYPES) if (qtype == k).any()}
    out["overall"] = hits.float().mean().item()
    return out


def train_llava(
    model: Any,
    head: nn.Module,
    groups: list[dict[str, Any]],
    data: Split,
    val: Split,
    steps: int,
    batch: int,
    type_weights: tuple[float, ...],
    aux_weight: float,
    gen: torch.Generator,
    log: Callable[[str], None],
    val_every: int = 100,
    val_size: int = 300,
    balance_yes_no: bool = False,
) -> None:
    """Answer loss (answer tokens + EOS) + ``aux_weight`` x the vision auxiliary loss."""
    pad_id, keep = model.config.pad_token_id, 4  # longest answer: 2 tokens + EOS
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lr(s, steps, max(1, steps // 20)))
    val_rows = torch.randperm(len(val.qtype), generator=torch.Generator().manual_seed(0))[:val_size]
    params = [p for g in groups for p in g["params"]]
    model.train()
    running = 0.0
    for step in range(steps):
        rows = sample_questions(data, batch, type_weights, gen, balance_yes_no)
        b = make_batch(data, rows, pad_id, keep)
        image_rows = data.image_row[rows]
        pixels = normalize(augment(data.images[image_rows], gen))
        logits, feats = answer_logits(model, b, pixels, keep)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["targets"].reshape(-1), ignore_index=-100)
        if aux_weight > 0:
            loss = loss + aux_weight * aux_loss(head, feats, data.colour[image_rows], data.shape[image_rows])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        running = loss.item() if step == 0 else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % 20 == 0:
            log(f"llava step {step + 1}/{steps} loss {running:.3f}")
        if val_every and ((step + 1) % val_every == 0 or step + 1 == steps):
            scores = validate(model, val, val_rows, pad_id, keep)
            log("validation " + " ".join(f"{k} {v:.3f}" for k, v in scores.items()))
