"""Decoder: one model, one stack of parts, batches of samples in, predictions out.

Generation itself is transformers' ``generate`` (batched, left padded, KV cache, stop strings);
the parts act through the registered attention function and one logits processor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from mllm_refine.adapter_lookup import adapter_for
from mllm_refine.compat import cache_kwarg
from mllm_refine.components import ModelInfo
from mllm_refine.data.sample import Sample
from mllm_refine.engine.branches import BranchRunner, check_branches
from mllm_refine.engine.capture import Capture
from mllm_refine.engine.config import DecodeConfig
from mllm_refine.engine.forcing import TeacherForcing
from mllm_refine.engine.kv_cache import growing_cache
from mllm_refine.engine.parts import Parts
from mllm_refine.engine.prefill import PrefillPass, prefill
from mllm_refine.engine.processor import RefineProcessor
from mllm_refine.engine.step_view import StepView
from mllm_refine.engine.stopping import StopOnStrings
from mllm_refine.functional import sample_generators

# Explicit neutral values: generate would otherwise fill unset fields from the checkpoint's
# generation_config, and warpers must run after the parts, inside RefineProcessor.
_NEUTRAL = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, num_beams=1)
_NEUTRAL_SAMPLING = dict(temperature=1.0, top_k=0, top_p=1.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)


@dataclass
class Prediction:
    """One answer: its text, tokens and what each part chose (``choices``, per answer token where
    a part decides per step)."""

    id: str
    question: str
    prediction: str
    answers: list[str] | None = None
    tokens: list[int] = field(default_factory=list)
    choices: dict[str, Any] = field(default_factory=dict)
    fallbacks: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The answer text (``prediction``)."""
        return self.prediction


class Decoder:
    """One model and one stack of parts; the ``RefineContext`` its input refiners see."""

    def __init__(
        self, model: nn.Module, processor: Any, parts: Parts | None = None, config: DecodeConfig | None = None
    ) -> None:
        self.model: Any = model  # a transformers model: submodules, config and generation helpers are read by name
        self.processor = processor
        self.parts = parts or Parts()
        self.config = config or DecodeConfig()
        self.config.validate()
        self.parts.check()
        self.adapter = adapter_for(model, processor)
        self.tokenizer = self.adapter.tokenizer
        self.needs = self.parts.setup(self.adapter.info())

    @property
    def info(self) -> ModelInfo:
        """The language model's shape and family (``RefineContext``)."""
        return self.adapter.info()

    @property
    def vision_config(self) -> Any:
        """The model's vision config (``RefineContext``); None for a text-only model."""
        return getattr(self.model.config, "vision_config", None)

    def prefill(
        self, samples: list[Sample], layers: list[int], *, grad: bool = False, pixel_grad: bool = False, logits: bool = True
    ) -> PrefillPass:
        """One batched forward over ``samples`` keeping the last prompt row of ``layers``
        (``RefineContext.prefill``; see ``engine.prefill.prefill``)."""
        return prefill(self.model, self.adapter, samples, layers, grad=grad, pixel_grad=pixel_grad, logits=logits)

    def generation_config(self) -> GenerationConfig:
        tok, gen = self.tokenizer, self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tok.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if isinstance(eos, list) else eos)
        return GenerationConfig(
            max_new_tokens=self.config.max_new_tokens,
            do_sample=self.config.do_sample,
            eos_token_id=eos,
            pad_token_id=pad,
            **_NEUTRAL,
            **(_NEUTRAL_SAMPLING if self.config.do_sample else {}),
        )

    def _eos_ids(self, gc: GenerationConfig) -> set[int]:
        eos = gc.eos_token_id
        return set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()

    def prefill_rows(
        self, samples: list[Sample], layers: list[int], questions: list[str] | None = None
    ) -> list[dict[int, torch.Tensor]]:
        """Per sample, ``{layer: (H, I)}``: the last prompt token's attention over that sample's
        image tokens in blocks ``layers`` (1..L), from one forward over the whole batch that
        ends after the last of them.
        ``questions`` replaces each sample's question (e.g. a generic one)."""
        if questions is not None:
            samples = [dataclasses.replace(s, question=q) for s, q in zip(samples, questions, strict=True)]
        with torch.no_grad():
            p = self.prefill(samples, layers, logits=False)
        counts = p.image_slots.sum(1).tolist()  # (B,) image tokens per sample
        return [{l: p.image_rows(l)[b, :, : counts[b]] for l in layers} for b in range(len(samples))]

    @torch.no_grad()
    def generate(
        self, samples: list[Sample], observe: Callable[[StepView, torch.Tensor], None] | None = None
    ) -> list[Prediction]:
        """Answer a batch; one prediction per sample, in order. ``observe(view, logits)`` is called
        at every step of the answer pass (see ``RefineProcessor``)."""
        samples, new, processor, gc, state = self._run(samples, observe)
        reports = {p.name: p.report(state) for p in self.parts.components()}
        layers, fallbacks = processor.chosen()
        return [self._prediction(s, new[b], layers[b], fallbacks[b], reports, b, gc) for b, s in enumerate(samples)]

    @torch.no_grad()
    def loglikelihood(self, samples: list[Sample], continuations: list[str]) -> list[tuple[float, bool]]:
        """Per sample, the summed log-probability of ``continuations[b]`` (the answer text that
        follows the prompt) under the refined logits, teacher-forced through the same parts, and
        whether greedy decoding would produce it. Sampling settings do not apply."""
        tokens = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        for sample, t in zip(samples, tokens, strict=True):
            if not t:
                raise ValueError(f"sample {sample.id!r}: the continuation is empty")
        base = self.config
        self.config = dataclasses.replace(base, do_sample=False, stop=[], max_new_tokens=max(len(t) for t in tokens))
        try:
            eos = sorted(self._eos_ids(self.generation_config()))
            force = TeacherForcing(tokens, fill=eos[0] if eos else tokens[0][0], device=self.model.device)
            self._run(samples, None, force)
        finally:
            self.config = base
        return force.results()

    def _run(
        self,
        samples: list[Sample],
        observe: Callable[[StepView, torch.Tensor], None] | None,
        force: TeacherForcing | None = None,
    ) -> tuple[list[Sample], list[list[int]], RefineProcessor, GenerationConfig, dict[str, Any]]:
        """One ``generate`` over the batch with the parts installed: (the samples after the input
        refiners, each row's new tokens, the step processor, the generation config, the request's
        state, where the parts kept what they found)."""
        for refiner in self.parts.input_refiners:
            samples = refiner.refine(samples, self)
        inputs = self.adapter.model_inputs(samples)
        capture = Capture(self.adapter, self.needs, self.parts.head_filters)
        capture.begin(inputs["input_ids"], inputs, samples)
        if self.needs.branches:
            branches = check_branches(self.needs.branches)
            capture.branches = BranchRunner(self.model, self.adapter, branches, inputs, samples, capture, self.config.max_new_tokens)
        # Sampling: each sample draws from its own stream, so batch size and resumes never
        # change a sampled answer.
        generators = (
            sample_generators(self.config.seed, [s.id for s in samples], self.model.device) if self.config.do_sample else None
        )
        processor = RefineProcessor(self.parts, capture, self.adapter, self.config, len(samples), observe, generators, force)
        gc = self.generation_config()
        prompt_length = inputs["input_ids"].shape[1]
        stopping = StoppingCriteriaList()
        if self.config.stop:
            stopping.append(StopOnStrings(self.tokenizer, self.config.stop, prompt_length))
        # A cache that grows in place: no step copies it (engine.kv_cache).
        cache = growing_cache(self.adapter.text_config, prompt_length, self.config.max_new_tokens)
        with capture.installed(cache):
            out = self.model.generate(
                **inputs,
                **({cache_kwarg(): cache} if cache is not None else {}),
                generation_config=gc,
                logits_processor=LogitsProcessorList([processor]),
                stopping_criteria=stopping,
            )
        return samples, out[:, prompt_length:].tolist(), processor, gc, capture.state  # new tokens: (B, N)

    def _prediction(
        self, sample: Sample, tokens: list[int], layers: list[int], fallbacks: int, reports: dict, b: int, gc: GenerationConfig
    ) -> Prediction:
        """Row ``b``'s record: its text up to the first end token or stop string, the layer chosen
        at each of its steps, what the parts reported for it and how often it fell back."""
        eos = self._eos_ids(gc)
        n = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
        tokens = tokens[:n]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in self.config.stop:
            text = text.split(stop)[0]
        choices: dict[str, Any] = {}
        if layers:
            choices["layer"] = layers[: max(n, 1)]
        for name, report in reports.items():
            for key, values in report.items():
                choices[f"{name}.{key}"] = values[b]
        return Prediction(
            id=sample.id,
            question=sample.question,
            prediction=text.strip(),
            answers=sample.answers,
            tokens=tokens,
            choices=choices,
            fallbacks=fallbacks,
            meta=dict(sample.meta),
        )
