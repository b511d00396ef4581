"""Build the embedded default model's shipped assets (seeded, CPU).

Stage 1: the CLIP vision tower learns to name each training image's colour and shape from every
patch token. Stage 2: the LLaVA (SmolLM2-135M-Instruct frozen, LoRA on its attention, projector,
vision tower) learns to answer the easy-VQA train questions. The assets are then assembled into
a full checkpoint exactly as users get it and scored on the easy-VQA test split, with the real
images and with blank ones.

    python scripts/build_embedded.py --seed 0 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads stall a shared machine

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mllm_refine.data.easy_vqa import EasyVQA  # noqa: E402
from mllm_refine.embedded import assembly as asm  # noqa: E402
from mllm_refine.embedded import lora, spec, training  # noqa: E402
from mllm_refine.embedded.evaluate import evaluate  # noqa: E402

START = time.time()


def log(message: str) -> None:
    print(f"[{time.time() - START:7.1f} s] {message}", flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=asm.ASSETS, help="where the shipped assets go")
    p.add_argument("--vision-steps", type=int, default=2000)
    p.add_argument("--vision-batch", type=int, default=64)
    p.add_argument("--vision-lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=600, help="stage-2 steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="projector and LoRA learning rate")
    p.add_argument("--tower-lr", type=float, default=1e-4, help="vision tower learning rate in stage 2")
    p.add_argument("--lora-rank", type=int, default=8, help="0: no LoRA, the language model stays as shipped")
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--aux-weight", type=float, default=0.5)
    p.add_argument("--type-weights", type=float, nargs=3, default=(0.5, 0.25, 0.25), metavar=("YES_NO", "COLOUR", "SHAPE"))
    p.add_argument("--init-from", type=Path, default=None, help="assets folder to start from (continues a build)")
    p.add_argument("--balance-yes-no", action="store_true", help="draw yes and no answers equally often")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--eval-limit", type=int, default=None, help="test questions to score (default: all 9,673)")
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--no-eval", action="store_true")
    return p.parse_args()


def build(args: argparse.Namespace) -> dict:
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    lm, tokenizer = spec.load_language_model(torch.float32)
    tokenizer = spec.prepare_tokenizer(tokenizer)
    processor = spec.build_processor(tokenizer)
    config = spec.build_config(lm.config, tokenizer)
    spec.add_image_token_row(lm, len(tokenizer))
    model = LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.tie_weights()
    del lm
    model.model.language_model.requires_grad_(False)
    model.lm_head.requires_grad_(False)
    lora_params = []
    if args.lora_rank > 0:
        lora_params = lora.add_lora(model.model.language_model, spec.LORA_TARGETS, args.lora_rank, args.lora_alpha, args.seed)
    if args.init_from is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.init_from / asm.VISION_FILE), strict=False)
        if lora_params:
            lora.load_lora(model.model.language_model, load_file(args.init_from / asm.LORA_FILE), spec.LORA_TARGETS)
        log(f"initialised from {args.init_from}")
    log(f"model ready: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable parameters")

    # Every 20th training image is held out for validation during the build.
    train = training.load_split(processor, lambda i: i % 20 != 0)
    val = training.load_split(processor, lambda i: i % 20 == 0)
    log(f"data: {len(train.qtype)} train / {len(val.qtype)} validation questions")

    head = torch.nn.Linear(config.vision_config.hidden_size, training.N_COLOURS + training.N_SHAPES)
    training.pretrain_vision(model, head, train, args.vision_steps, args.vision_batch, args.vision_lr, gen, log)
    groups = [
        {"params": list(model.model.multi_modal_projector.parameters()) + list(head.parameters()), "lr": args.lr},
        {"params": list(model.model.vision_tower.parameters()), "lr": args.tower_lr},
    ]
    if lora_params:
        groups.append({"params": lora_params, "lr": args.lr})
    training.train_llava(
        model, head, groups, train, val, args.steps, args.batch, tuple(args.type_weights), args.aux_weight, gen, log, args.val_every,
        balance_yes_no=args.balance_yes_no,
    )
    return save_assets(model, processor, config, args)


def save_assets(model, processor, config, args: argparse.Namespace) -> dict:
    from safetensors.torch import save_file

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        if path.is_file():
            path.unlink()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k.startswith(("model.vision_tower.", "model.multi_modal_projector."))}
    save_file(state, out / asm.VISION_FILE)
    if args.lora_rank > 0:
        save_file(lora.lora_state_dict(model.model.language_model, spec.LORA_TARGETS), out / asm.LORA_FILE)
    config.save_pretrained(out)
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
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "build_seconds": round(build_seconds, 1),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version(), "torch": torch.__version__},
        "asset_bytes": sizes,
    }
    if not args.no_eval:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        with tempfile.TemporaryDirectory() as tmp:
            asm.assemble(Path(tmp) / "checkpoint", assets=args.out)
            model = LlavaForConditionalGeneration.from_pretrained(Path(tmp) / "checkpoint", dtype=torch.float32).eval()
            processor = AutoProcessor.from_pretrained(Path(tmp) / "checkpoint")
        test = EasyVQA("test", limit=args.eval_limit)
        report["test"] = evaluate(model, processor, test, args.eval_batch, log=log)
        report["test_blank_image"] = evaluate(model, processor, test, args.eval_batch, blank=True, log=log)
        for name in ("test", "test_blank_image"):
            r = report[name]
            log(f"{name}: overall {r['overall']:.4f} yes/no {r['yes_no']:.4f} colour {r['colour']:.4f} shape {r['shape']:.4f} yes-rate {r['yes_rate']:.3f} (n={r['n']['overall']})")
    report["total_seconds"] = round(time.time() - START, 1)
    (args.out / asm.REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    log(f"build {build_seconds / 60:.1f} min, total {report['total_seconds'] / 60:.1f} min; report in {args.out / asm.REPORT_FILE}")


if __name__ == "__main__":
    main()
