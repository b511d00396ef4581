"""lmms-eval model ``mllm_refine``: any lmms-eval task through any recipe.

    python -m lmms_eval --model mllm_refine \
        --model_args recipe=dualpd,pretrained=/ckpts/llava-1.5-7b-hf --tasks pope --batch_size 8

Registered through lmms-eval's entry-point group ``lmms_eval.models``
(``mllm_refine.integrations.lmms_eval_manifest``). Model
arguments: ``recipe`` (a name or file), ``pretrained`` (a registered model name, a checkpoint
folder or a hub id; default: the recipe's ``model.path``), ``dtype``, ``device``, and any recipe
key as an override (``decode.max_new_tokens=8``, ``head_filters.0.ratio=0.2``).

Each request's generation settings are honoured (``until`` as stop strings, ``max_new_tokens``,
``temperature``/``do_sample``, ``top_p``); requests with the same settings are decoded in
batches of ``--batch_size``. Ranks come from lmms-eval's accelerator. ``loglikelihood`` scores the
continuation under the recipe's refined logits, teacher-forced through the same parts.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lmms_eval.api.model import lmms

log = logging.getLogger("mllm_refine.lmms_eval")

# Generation settings of lmms-eval tasks that leave greedy or sampled decoding as it is.
_NEUTRAL_KWARGS = {"num_beams": 1, "use_cache": True, "image_aspect_ratio": None}


def decode_settings(gen_kwargs: dict[str, Any], default_max_new_tokens: int) -> dict[str, Any]:
    """A request's ``generation_kwargs`` as decode settings; beam search is refused by name."""
    kwargs = dict(gen_kwargs)
    until = kwargs.pop("until", None)
    stop = [until] if isinstance(until, str) else list(until or [])
    beams = kwargs.pop("num_beams", 1) or 1
    if int(beams) != 1:
        raise ValueError(f"generation_kwargs.num_beams={beams}: beam search is not supported (the parts refine one continuation per sample)")
    temperature = float(kwargs.pop("temperature", 0) or 0)
    do_sample = bool(kwargs.pop("do_sample", temperature > 0)) and temperature > 0
    top_p = kwargs.pop("top_p", None)
    settings: dict[str, Any] = {
        "stop": stop,
        "max_new_tokens": int(kwargs.pop("max_new_tokens", None) or default_max_new_tokens),
        "do_sample": do_sample,
    }
    if do_sample:
        settings["temperature"] = temperature
        settings["top_p"] = 1.0 if top_p is None else float(top_p)
    ignored = sorted(k for k, v in kwargs.items() if _NEUTRAL_KWARGS.get(k, object()) != v)
    if ignored:
        log.warning("mllm_refine: generation_kwargs not used by the refine engine: %s", ", ".join(ignored))
    return settings


def _passed_through(result: tuple[float, bool]) -> Any:
    """``result`` in a form the evaluator hands to the task unchanged. lmms-eval 0.7's evaluator
    passes every response through ``unwrap_generation_output``, which turns a loglikelihood
    tuple into its string (so ``multiple_choice`` tasks fail on its own models too); a
    ``GenerationResult`` is unwrapped to its content as it is. Where the evaluator keeps tuples,
    the tuple is returned."""
    try:
        from lmms_eval.api.instance import GenerationResult, unwrap_generation_output
    except ImportError:
        return result
    if unwrap_generation_output(result)[0] == result:
        return result
    return GenerationResult(text=result)


class RefinedLMM(lmms):
    """An lmms-eval model whose answers come from ``mllm_refine.Refiner``."""

    is_simple = True

    def __init__(
        self,
        recipe: str = "vanilla",
        pretrained: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        trust_remote_code: bool = False,
        **overrides: Any,
    ) -> None:
        super().__init__()
        from accelerate import Accelerator

        from mllm_refine.models import load_model
        from mllm_refine.recipes.loader import load_recipe
        from mllm_refine.refiner import Refiner, override_texts

        accelerator = Accelerator()
        self.accelerator = accelerator
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        texts = override_texts(overrides)
        if batch_size is not None and str(batch_size).isdigit():
            texts.append(f"decode.batch_size={int(batch_size)}")
        loaded = load_recipe(recipe, texts)
        model_args = dict(loaded.model)
        if pretrained is not None:
            model_args["path"] = str(pretrained)
        if dtype is not None:
            model_args["dtype"] = dtype
        if trust_remote_code:
            model_args["trust_remote_code"] = True
        if self._world_size > 1:
            model_args["device"] = str(accelerator.device)
        elif device is not None:
            model_args["device"] = device
        model, processor = load_model(**model_args)
        self.refiner = Refiner(model, processor, loaded)

    # --- lmms-eval's requests ----------------------------------------------------------------
    def _sample(self, context: str, doc_to_visual: Any, doc_id: Any, task: str, split: str):
        from mllm_refine.data.sample import Sample
        from mllm_refine.refiner import images_of

        doc = self.task_dict[task][split][doc_id]
        visuals = doc_to_visual(doc) if doc_to_visual is not None else []
        sid = f"{task}/{split}/{doc_id}"
        if any(isinstance(v, str) for v in visuals or []):
            raise ValueError(f"{sid}: video inputs are not supported; only images")
        return Sample(id=sid, question=context, images=images_of(list(visuals or []), sid))

    def generate_until(self, requests: list) -> list[str]:
        """Answers in request order; requests sharing generation settings share batches."""
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(i)
        out: list[str] = [""] * len(requests)
        size = self.refiner.recipe.decode.batch_size
        default_max = self.refiner.recipe.decode.max_new_tokens
        for indices in groups.values():
            settings = decode_settings(requests[indices[0]].args[1], default_max)
            for start in range(0, len(indices), size):
                chunk = indices[start : start + size]
                samples = [self._sample(r.args[0], *r.args[2:6]) for r in (requests[i] for i in chunk)]
                for i, p in zip(chunk, self.refiner.generate(samples=samples, **settings)):
                    out[i] = p.text
                    self.cache_hook.add_partial("generate_until", (requests[i].args[0], requests[i].args[1]), p.text)
        return out

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        """(the continuation's mean negative log-likelihood per token, whether it is the greedy
        answer). A loss, as lmms-eval's own transformers models return: its ``multiple_choice``
        tasks pick the choice with the smallest value."""
        out: list[tuple[float, bool]] = []
        size = self.refiner.recipe.decode.batch_size
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            samples, continuations = [], []
            for r in chunk:
                context, target, doc_to_visual, doc_id, task, split = r.args
                doc = self.task_dict[task][split][doc_id]
                continuations.append(target if isinstance(target, str) else target(doc))
                samples.append(self._sample(context, doc_to_visual, doc_id, task, split))
            tokenizer = self.refiner.decoder.tokenizer
            for text, (logp, greedy) in zip(continuations, self.refiner.loglikelihood(continuations, samples=samples)):
                out.append((0.0 - logp / len(tokenizer(text, add_special_tokens=False)["input_ids"]), greedy))
        return [_passed_through(r) for r in out]

    def generate_until_multi_round(self, requests: list) -> list[str]:
        raise NotImplementedError("mllm_refine: multi-round generation is not supported; use generate_until tasks")


__all__ = ["RefinedLMM", "decode_settings"]
