"""Build the DoLa parity fixture with Hugging Face transformers 4.52 (``generate(dola_layers=...)``).

DoLa left transformers' core after 4.52, so its outputs are recorded once, here, and the test
``tests/plugins/test_dola.py`` replays the same prompts through mllm-refine (transformers 5) and
asserts the same tokens. This script runs in its own virtual environment, never the project's:

    python -m venv --system-site-packages /tmp/venv452
    /tmp/venv452/bin/pip install "transformers==4.52.4"
    /tmp/venv452/bin/python scripts/make_dola_fixture.py

It writes ``tests/fixtures/dola/``: a tiny LLaVA (8-block Llama, untied embeddings) as
``config.json`` + ``model.safetensors``, and ``cases.json`` with the prompts, their token ids and
HF's DoLa tokens for each setting. It imports nothing from mllm_refine except the word-level
tokenizer module, loaded by path (it only needs ``tokenizers``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import torch
import transformers
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "dola"
QUESTIONS = [
    "what color is the circle ?",
    "is there a red square in the image ?",
    "how many dogs are near the tree ?",
    "describe the picture please",
    "which object is on the left of the car ?",
]
# (dola_layers, the model's top-level tie_word_embeddings flag as HF reads it, repetition_penalty, do_sample)
CASES = [
    ("high", False, 1.2, False),
    ("low", False, 1.2, False),
    ("low", True, 1.2, False),  # LlavaConfig's default in 4.52: the flag says tied, the weights are not
    ([1, 3, 5, 7], False, 1.0, False),
    ("high", False, 1.2, True),
]
MAX_NEW_TOKENS = 12


def load_tiny_tokenizer():
    """The project's word-level tokenizer, imported from its file without the package."""
    path = ROOT / "mllm_refine" / "testing" / "tiny_tokenizer.py"
    spec = importlib.util.spec_from_file_location("tiny_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.tiny_tokenizer(["<image>"])


def sample_seed(recipe_seed: int, sample_id: str) -> int:
    """The seed mllm-refine draws for a batch holding only ``sample_id`` (checked by the test)."""
    digest = hashlib.sha256(("\0".join([str(recipe_seed), sample_id])).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def build_model(tok) -> LlavaForConditionalGeneration:
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
        patch_size=8, projection_dim=16, initializer_range=0.2,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    # Wide logit gaps keep greedy choices stable under the float reordering of another release.
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
        # Large embeddings make the early exit of h_0 diverge, so the 'low' bucket's start layer
        # (0 untied, 2 tied) shows in the tokens.
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    return model


def generate(model, tok, rows: list[list[int]], **settings) -> list[list[int]]:
    """HF ``generate`` on left-padded ``rows``; the new tokens of each row, cut at EOS."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])  # (B, T)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, suppress_tokens=[tok.convert_tokens_to_ids("<image>")], top_k=0, **settings,
    )  # fmt: skip  (mllm-refine never emits image placeholders: suppress them here too)
    new = [row[width:].tolist() for row in out]
    return [n[: n.index(tok.eos_token_id)] if tok.eos_token_id in n else n for n in new]


def main() -> None:
    torch.set_num_threads(1)
    assert transformers.__version__.startswith("4.52"), "run this in the transformers 4.52 venv (see docstring)"
    tok = load_tiny_tokenizer()
    model = build_model(tok)
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    prompts = [f"USER: {q} ASSISTANT:" for q in QUESTIONS]  # the tiny LLaVA chat template, text only
    input_ids = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    cases = []
    for layers, tie_flag, penalty, do_sample in CASES:
        model.config.tie_word_embeddings = tie_flag
        tokens, seeds = [], []
        for i, ids in enumerate(input_ids):  # batch size 1: HF's layer choice is then per sample
            seeds.append(sample_seed(0, f"p{i}"))
            torch.manual_seed(seeds[-1])
            tokens += generate(model, tok, [ids], dola_layers=layers, repetition_penalty=penalty, do_sample=do_sample)
        vanilla = [generate(model, tok, [ids], repetition_penalty=penalty)[0] for ids in input_ids]
        changed = sum(t != v for t, v in zip(tokens, vanilla))
        print(f"{layers!s:>14} tied-flag={tie_flag!s:5} rp={penalty} sample={do_sample}: "
              f"{changed}/5 differ from greedy")  # fmt: skip
        cases.append(dict(dola_layers=layers, tie_word_embeddings_flag=tie_flag, repetition_penalty=penalty,
                          do_sample=do_sample, tokens=tokens, seeds=seeds))  # fmt: skip
    model.config.tie_word_embeddings = False
    assert cases[1]["tokens"] != cases[2]["tokens"], "the 'low' start layer must change some tokens"
    # HF averages the divergence over the batch: one batch of all prompts vs batches of one.
    # (Its repetition penalty also counts left padding, so compare without it too.)
    for penalty in (1.0, 1.2):
        counts = []
        for dola in ({"dola_layers": "high"}, {}):
            batched = generate(model, tok, input_ids, repetition_penalty=penalty, **dola)
            single = [generate(model, tok, [ids], repetition_penalty=penalty, **dola)[0] for ids in input_ids]
            counts.append(sum(b != s for b, s in zip(batched, single)))
        print(f"rp={penalty}: one batch of 5 vs 5 batches of 1 differ in {counts[0]} prompts with DoLa 'high', "
              f"{counts[1]} without")  # fmt: skip
        differ = counts[0]
    meta = dict(transformers=transformers.__version__, max_new_tokens=MAX_NEW_TOKENS, questions=QUESTIONS,
                prompts=prompts, input_ids=input_ids, image_token_id=tok.convert_tokens_to_ids("<image>"),
                cases=cases, hf_batch_of_all_differs=differ)  # fmt: skip
    (OUT / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    print("wrote", sorted(p.name for p in OUT.iterdir()), sum(p.stat().st_size for p in OUT.iterdir()), "bytes")


if __name__ == "__main__":
    main()
