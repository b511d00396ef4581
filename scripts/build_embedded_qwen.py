"""Build the shipped assets of the Qwen2.5-VL embedded model ``smollm2-135m-scenes-qwen``
(seeded; CPU, or a GPU where there is one).

Stage 1: the vision tower and merger learn to name, from every merged token, the colour and
shape of the object its 28 px cell shows (or background), on easy-VQA scenes train images
drawn with ``--prior 0`` (colours and shapes independent: at the split's own 0.7 a shape follows
from its colour 80 % of the time, and the tower learned that instead of shape).
Stage 2: the whole model (SmolLM2-135M-Instruct frozen, LoRA on its attention, merger, tower)
learns to answer the scenes train questions, the stage-1 loss kept at a weight. Both stages
checkpoint into ``--work`` and a rerun of the same command resumes there. The assets are then
written to ``--out`` and the assembled checkpoint is scored on the scenes test split.

    python scripts/build_embedded_qwen.py --seed 0 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads stall a shared machine

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mllm_refine.embedded import look_loss as look  # noqa: E402
from mllm_refine.embedded import lora, qwen_spec, spec  # noqa: E402
from mllm_refine.embedded import qwen_assembly as asm  # noqa: E402
from mllm_refine.embedded import scenes_training as st  # noqa: E402

START = time.time()


def log(message: str) -> None:
    print(f"[{time.time() - START:7.1f} s] {message}", flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=asm.ASSETS, help="where the shipped assets go")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "embedded-qwen", help="checkpoints (resumed)")
    p.add_argument("--scenes", type=int, default=8000, help="train scenes")
    p.add_argument("--prior", type=float, default=0.0,
                   help="the train scenes' colour/shape prior (the split's own is 0.7; at 0.7 a shape is "
                        "guessed from its colour 80 %% of the time, and the tower learns that instead of shape)")  # fmt: skip
    p.add_argument("--vision-steps", type=int, default=1200)
    p.add_argument("--vision-batch", type=int, default=16)
    p.add_argument("--vision-lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=600, help="stage-2 steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="merger, head and LoRA learning rate")
    p.add_argument("--tower-lr", type=float, default=2e-4, help="vision tower learning rate in stage 2")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--aux-weight", type=float, default=0.5, help="weight of the stage-1 loss in stage 2")
    p.add_argument("--ground-weight", type=float, default=1.0, help="closeness of cell tokens to word embeddings")
    p.add_argument("--look-weight", type=float, default=0.0,
                   help="weight of the look loss in stage 2: the answer row's attention trained towards the target's cells")  # fmt: skip
    p.add_argument("--look-blocks", type=int, nargs="+", default=list(range(8, 17)), help="blocks (1-based) the look loss trains")
    p.add_argument("--init-from", type=Path, default=None, help="assets folder to start from (a further phase)")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--val-size", type=int, default=300, help="teacher-forced validation questions (held-out seed)")
    p.add_argument("--eval-limit", type=int, default=None, help="test questions to score (default: all)")
    p.add_argument("--no-eval", action="store_true")
    return p.parse_args()


def build(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    lm, tokenizer = spec.load_language_model(torch.float32)
    tokenizer = qwen_spec.prepare_tokenizer(tokenizer)
    processor = qwen_spec.build_processor(tokenizer)
    model = qwen_spec.new_model(lm, tokenizer, args.seed)
    del lm
    model.model.language_model.requires_grad_(False)
    model.lm_head.requires_grad_(False)
    lora_params = lora.add_lora(model.model.language_model, qwen_spec.LORA_TARGETS, args.lora_rank, args.lora_alpha, args.seed)
    head = st.CellHead.for_model(model, tokenizer, args.ground_weight)
    if args.init_from is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.init_from / asm.VISION_FILE), strict=False)
        lora.load_lora(model.model.language_model, load_file(args.init_from / asm.LORA_FILE), qwen_spec.LORA_TARGETS)
        log(f"initialised from {args.init_from}")
    log(f"model ready: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters")

    train = st.Questions.of("train", args.scenes, args.seed, args.prior)
    val = st.Questions.of("train", 200, args.seed + 1000, args.prior)  # other scenes of the train distribution
    val_rows = torch.randperm(len(val.qtype), generator=torch.Generator().manual_seed(0))[: args.val_size].tolist()
    log(f"data: {len(train.qtype)} train questions on {args.scenes} scenes / {len(val_rows)} validation")
    ckpt = st.Checkpoints(args.work, args.checkpoint_every)
    grid = qwen_spec.GRID

    def vision_loss(step: int) -> torch.Tensor:
        scene_ids = torch.randint(0, len(train.data.scenes), (args.vision_batch,), generator=gen).tolist()
        chosen = [train.data.scenes[i] for i in scene_ids]
        from mllm_refine.data import scenes

        batch = processor.image_processor(images=[scenes.rendered(s) for s in chosen], return_tensors="pt")
        feats = st.merged_features(model, batch)  # (B * G * G, D)
        return head.loss(feats, *st.cell_targets(chosen, grid))

    visual = {"visual": model.model.visual, "head": head}
    st.run_stage("vision", model, visual, [{"params": [*model.model.visual.parameters(), *head.parameters()], "lr": args.vision_lr}],
                 args.vision_steps, vision_loss, gen, ckpt, log)  # fmt: skip

    looked: list[float] = []

    def answer_loss(step: int) -> torch.Tensor:
        rows = st.sample_rows(train, args.batch, gen)
        batch = st.make_batch(processor, train, rows)
        ids = batch["input_ids"]  # (B, L)
        positions = look.answer_positions(batch["targets"], ids.shape[1])  # (B,)
        blocks = args.look_blocks if args.look_weight > 0 else []
        with look.recording(model, blocks, positions, batch["attention_mask"]) as rec:
            logits, feats = st.answer_logits(model, batch)  # (B, KEEP, V), (N, D)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1), ignore_index=-100)
        if args.aux_weight > 0:
            loss = loss + args.aux_weight * head.loss(feats, *st.cell_targets([train.scene(r) for r in rows], grid))
        if args.look_weight > 0:
            cells = look.box_shares(st.target_boxes(train, rows), grid, (qwen_spec.IMAGE_SIZE, qwen_spec.IMAGE_SIZE))  # (B, G*G)
            seen = look.look_loss(rec.rows, ids == model.config.image_token_id, cells)
            looked.append(seen.item())
            if len(looked) % 10 == 0:
                log(f"answers step {step + 1}: look loss {sum(looked[-10:]) / 10:.3f} (mean of 10 steps)")
            loss = loss + args.look_weight * seen
        return loss

    def validation(step: int) -> None:
        scores = st.validate(model, processor, val, val_rows)
        log(f"validation at {step}: " + " ".join(f"{k} {v:.3f}" for k, v in scores.items()))

    merger = [p for n, p in model.model.visual.named_parameters() if n.startswith("merger.")]
    tower = [p for n, p in model.model.visual.named_parameters() if not n.startswith("merger.")]
    groups = [
        {"params": merger + list(head.parameters()) + lora_params, "lr": args.lr},
        {"params": tower, "lr": args.tower_lr},
    ]
    # the LoRA factors alone: the frozen language model needs no checkpoint
    modules = {"visual": model.model.visual, "head": head, "lora": torch.nn.ParameterList(lora_params)}
    st.run_stage("answers", model, modules, groups, args.steps, answer_loss, gen, ckpt, log, validation)
    return save_assets(model, processor, args)


def save_assets(model, processor, args: argparse.Namespace) -> dict:
    from safetensors.torch import save_file

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        if path.is_file():
            path.unlink()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k.startswith("model.visual.")}
    save_file(state, out / asm.VISION_FILE)
    save_file(lora.lora_state_dict(model.model.language_model, qwen_spec.LORA_TARGETS), out / asm.LORA_FILE)
    model.config.save_pretrained(out)
    processor.save_pretrained(out)
    # save_pretrained drops the padding side; generation needs left padding on reload.
    tok_config = out / "tokenizer_config.json"
    tok_config.write_text(json.dumps({**json.loads(tok_config.read_text()), "padding_side": "left"}, indent=2) + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    log(f"assets written to {out}: {sum(sizes.values()) / 1e6:.1f} MB")
    return sizes


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    log(f"build seed {args.seed}, {args.threads} thread(s), torch {torch.__version__}")
    sizes = build(args)
    build_seconds = time.time() - START
    report = {
        "seed": args.seed,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("out", "work")},
        "build_seconds_this_run": round(build_seconds, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                    "python": platform.python_version(), "torch": torch.__version__},  # fmt: skip
        "asset_bytes": sizes,
    }
    if not args.no_eval:
        from mllm_refine.embedded.scenes_eval import evaluate_scenes

        report.update(evaluate_scenes(args.out, args.eval_limit, log))
    (args.out / asm.REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    log(f"done in {(time.time() - START) / 60:.1f} min; report in {args.out / asm.REPORT_FILE}")


if __name__ == "__main__":
    main()
