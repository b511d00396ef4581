"""Conformance kit: the checks every decoding part must pass, for a plugin's own test suite.

    from mllm_refine.testing.conformance import check_component

    def test_my_selector_conforms():
        check_component(MySelector, {"mode": "lowest"})   # every check on every tiny model

Each check raises ``ConformanceError`` (an ``AssertionError``) with one line naming the part,
the tiny model and what went wrong. ``check_component`` runs them all; the single checks
(``check_params``, ``check_needs_and_returns``, ``check_batch_independence``, ``check_noop``,
``check_no_layer_keeps_final``) take the same arguments and suit ``pytest.mark.parametrize``.

The part runs in the smallest stack the engine accepts, beside kit parts that declare nothing:
a LayerSelector with ``KeepFinal`` (reads the chosen layer's lens, keeps the final logits), a
LogitCombiner that uses a layer with ``FixedLayer`` (the middle block, or ``-1``). Decoding is
greedy fp32 over a batch with different image sizes, prompt lengths and a text-only sample.
"""

from __future__ import annotations

import dataclasses
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Any, Callable, Iterator, cast

import numpy as np
import torch
from PIL import Image

from mllm_refine.components import Component, HeadFilter, InputRefiner, LayerSelector, LogitCombiner, ModelInfo, Needs
from mllm_refine.data.sample import Sample
from mllm_refine.engine import ConflictError, DecodeConfig, Decoder, Parts, StepView
from mllm_refine.recipes.schema import RecipeError, check_value
from mllm_refine.testing.tiny_models import TINY_MODELS

MAX_NEW_TOKENS = 5
# StepView reader -> the Needs field that declares what it reads (readers this engine lacks are skipped).
_NEED_OF = {"attention": "attention", "hidden": "hidden", "prefill_row": "prefill_rows", "scores": "scores",
            "branch_logits": "branches"}  # fmt: skip


class ConformanceError(AssertionError):
    """A part broke the contract of its interface; the message says where and how."""


@dataclass
class KeepFinal(LogitCombiner):
    """Kit companion of a LayerSelector: reads the chosen layer's lens, returns the final logits."""

    name = "conformance_keep_final"

    def combine(self, view: StepView, layer: torch.Tensor | None) -> torch.Tensor:
        if layer is not None:
            for l in set(layer.tolist()) - {-1}:  # a KeyError naming the missing declaration
                view.hidden(l)
            view.lens_at(layer)  # the engine must have captured every layer the selector may pick
        return view.logits


@dataclass
class FixedLayer(LayerSelector):
    """Kit companion of a LogitCombiner: the middle block for every sample, or ``-1`` (none)."""

    name = "conformance_fixed_layer"
    none: bool = False

    def setup(self, info: ModelInfo) -> None:
        super().setup(info)
        self.layer = max(1, info.num_layers // 2)

    def candidates(self) -> list[int]:
        return [self.layer]

    def select(self, view: StepView) -> torch.Tensor:
        value = -1 if self.none else self.layer
        return torch.full((view.logits.shape[0],), value, dtype=torch.long, device=view.logits.device)


def make_samples(seed: int = 0) -> list[Sample]:
    """Four samples: three images of different sizes and prompts of different lengths (so the
    batch is padded), and one text-only question."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 48), (32, 32), (56, 40)]
    questions = ["what color is the circle?", "is there a red square in the image?", "how many"]
    out = [
        Sample(id=f"s{i}", question=q, images=[Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8))])
        for i, (hw, q) in enumerate(zip(sizes, questions))
    ]
    return [*out, Sample(id="text", question="what shape is the sun?", images=[])]


def _label(cls: type, model: str | None = None) -> str:
    name = getattr(cls, "name", cls.__name__)
    return f"{name} ({cls.__name__})" + (f" on {model}" if model else "")


def check_params(cls: type[Component], params: dict[str, Any] | None = None) -> None:
    """The class is a registered-kind dataclass with a ``name``; every recipe parameter has a
    default whose value fits its annotated type; ``params`` and ``noop_params`` name real fields."""
    label = _label(cls)
    kinds = (LayerSelector, HeadFilter, LogitCombiner, InputRefiner)
    if not (isinstance(cls, type) and issubclass(cls, kinds)):
        raise ConformanceError(f"{label}: not a subclass of {', '.join(k.__name__ for k in kinds)}")
    if not dataclasses.is_dataclass(cls) or not isinstance(getattr(cls, "name", None), str):
        raise ConformanceError(f"{label}: a component is a @dataclass with a `name` class attribute")
    try:
        hints = typing.get_type_hints(cls)
    except Exception as e:
        raise ConformanceError(f"{label}: parameter annotations do not resolve: {e}") from e
    fields = {f.name: f for f in cls.params()}
    for f in fields.values():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConformanceError(f"{label}: parameter {f.name!r} has no default (recipes may leave it out)")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        try:
            check_value(default, hints[f.name], f"{label}: default of {f.name!r}")
        except RecipeError as e:
            raise ConformanceError(str(e)) from None
    for what, values in (("params", params), ("noop_params", cls.noop_params)):
        for key in values or {}:
            if key not in fields:
                raise ConformanceError(f"{label}: {what} names {key!r}, not a parameter; valid: {', '.join(fields)}")


def _stack(part: Component, companions: list[Component]) -> Parts:
    parts = Parts()
    for p in [*companions, part]:
        if isinstance(p, LayerSelector):
            parts.layer_selector = p
        elif isinstance(p, LogitCombiner):
            parts.logit_combiner = p
        elif isinstance(p, HeadFilter):
            parts.head_filters.append(p)
        elif isinstance(p, InputRefiner):
            parts.input_refiners.append(p)
        else:
            raise ConformanceError(f"{_label(type(p))}: not a decoding part")
    return parts


def _registered_companions(part: Component) -> Iterator[list[Component]]:
    """Registered parts that may complete the stack of a part that refuses the kit's companions:
    selectors with defaults for a combiner, combiners with their no-op parameters for a selector."""
    from mllm_refine.plugin_manager import get_registry

    registry = get_registry()
    kind = "logit_combiner" if isinstance(part, LayerSelector) else "layer_selector"
    for name in registry.names(kind):
        other = registry.get(kind, name).obj
        if kind == "logit_combiner" and (not other.uses_layer or other.noop_params is None):
            continue
        yield [other(**(other.noop_params or {}))] if kind == "logit_combiner" else [other()]


def kit_parts(
    cls: type[Component],
    params: dict[str, Any] | None = None,
    no_layer: bool = False,
    companions: list[Component] | None = None,
) -> Parts:
    """The smallest stack that runs ``cls(**params)``: beside ``companions`` if given, else beside
    the kit's (which declare nothing), else beside registered parts its ``conflicts`` accepts."""
    part = cls(**(params or {}))
    if companions is not None:
        options = [list(companions)]
    elif isinstance(part, LayerSelector):
        options = [[KeepFinal()], *_registered_companions(part)]
    elif isinstance(part, LogitCombiner) and part.uses_layer:
        options = [[FixedLayer(none=no_layer)]] if no_layer else [[FixedLayer()], *_registered_companions(part)]
    else:
        options = [[]]
    reasons = []
    for option in options:
        parts = _stack(part, option)
        try:
            parts.check()
            return parts
        except ConflictError as e:
            reasons.append(str(e))
    raise _NoStack(f"{_label(cls)}: no stack to test it in ({reasons[0]}); pass companions=[...]")


class _NoStack(ConformanceError):
    """The part refuses the kit's companions (e.g. it needs one particular selector)."""


@lru_cache(maxsize=None)
def _model(name: str) -> tuple[Any, Any]:
    """A tiny model, built once per process (they are deterministic and never modified)."""
    if name not in TINY_MODELS:
        raise ConformanceError(f"unknown tiny model {name!r}; choices: {', '.join(TINY_MODELS)}")
    return TINY_MODELS[name]()


@contextmanager
def _one_thread() -> Iterator[None]:
    """Toy-sized matmuls run fastest on one thread; busy CI machines make more threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _decode(model: Any, processor: Any, parts: Parts, samples: list[Sample], label: str) -> list[list[int]]:
    try:
        decoder = Decoder(model, processor, parts, DecodeConfig(max_new_tokens=MAX_NEW_TOKENS, batch_size=len(samples)))
        with _one_thread():
            return [p.tokens for p in decoder.generate(samples)]
    except ConformanceError:
        raise
    except KeyError as e:
        raise ConformanceError(f"{label}: read something it did not declare: {e.args[0] if e.args else e}") from e
    except Exception as e:
        raise ConformanceError(f"{label}: decoding failed: {type(e).__name__}: {e}") from e


def _vanilla(model: Any, processor: Any, samples: list[Sample], label: str) -> list[list[int]]:
    return _decode(model, processor, Parts(), samples, f"{label} (vanilla)")


@contextmanager
def _recording(part: Component, label: str) -> Iterator[set[tuple[str, Any]]]:
    """Record the StepView reads made inside ``part``'s own calls, and check what it returns."""
    reads: set[tuple[str, Any]] = set()
    inside = [False]
    originals = {name: getattr(StepView, name) for name in _NEED_OF if hasattr(StepView, name)}

    def reader(name: str):
        @wraps(originals[name])
        def read(view: StepView, key: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
            if inside[0]:
                reads.add((name, key))
            return originals[name](view, key, *args, **kwargs)

        return read

    def own(method: Any, check: Any) -> Any:
        @wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            inside[0] = True
            try:
                out = method(*args, **kwargs)
            finally:
                inside[0] = False
            check(out, *args)
            return out

        return call

    def check_select(out: Any, view: StepView) -> None:
        B = view.logits.shape[0]
        if not (isinstance(out, torch.Tensor) and out.shape == (B,) and out.dtype == torch.long):
            raise ConformanceError(f"{label}: select must return a ({B},) long tensor, got {_describe(out)}")
        allowed = set(cast(LayerSelector, part).candidates()) | {-1}
        if not set(out.tolist()) <= allowed:
            raise ConformanceError(f"{label}: select returned {sorted(set(out.tolist()) - allowed)}, not in candidates() or -1")

    def check_combine(out: Any, view: StepView, layer: Any = None) -> None:
        if not (isinstance(out, torch.Tensor) and out.shape == view.logits.shape and out.is_floating_point()):
            raise ConformanceError(f"{label}: combine must return {tuple(view.logits.shape)} float logits, got {_describe(out)}")

    def check_row(what: str):
        def check(out: Any, tensor: torch.Tensor, row: Any) -> None:
            if not (isinstance(out, torch.Tensor) and out.shape == tensor.shape and out.dtype == tensor.dtype):
                raise ConformanceError(f"{label}: {what} must return {tuple(tensor.shape)} {tensor.dtype}, got {_describe(out)}")
            if row.layer not in cast(HeadFilter, part).active_layers():
                raise ConformanceError(f"{label}: called in block {row.layer}, outside active_layers()")
            if what == "probs":
                sums = (out * row.key_valid[:, None, :]).sum(-1)  # (B, H)
                if not torch.allclose(sums, torch.ones_like(sums), atol=1e-4):
                    raise ConformanceError(f"{label}: probs rows must sum to 1 over valid keys, got {sums.min():.4g}..{sums.max():.4g}")

        return check

    def check_refine(out: Any, samples: list[Sample], decoder: Any) -> None:
        if not isinstance(out, list) or [getattr(s, "id", None) for s in out] != [s.id for s in samples]:
            raise ConformanceError(f"{label}: refine must return one Sample per input sample, in order (same ids)")

    wrapped: dict[str, Callable[..., None]]
    if isinstance(part, LayerSelector):
        wrapped = {"select": check_select}
    elif isinstance(part, LogitCombiner):
        wrapped = {"combine": check_combine}
    elif isinstance(part, HeadFilter):
        wrapped = {"scores": check_row("scores"), "probs": check_row("probs")}
    else:
        wrapped = {"refine": check_refine}
    try:
        for name in originals:
            setattr(StepView, name, reader(name))
        for name, check in wrapped.items():
            setattr(part, name, own(getattr(part, name), check))
        yield reads
    finally:
        for name, method in originals.items():
            setattr(StepView, name, method)
        for name in wrapped:
            part.__dict__.pop(name, None)


def _describe(out: Any) -> str:
    if isinstance(out, torch.Tensor):
        return f"{tuple(out.shape)} {out.dtype}"
    return type(out).__name__


Companions = list[Component] | None  # parts to test beside, when the kit's own do not fit


def check_needs_and_returns(
    cls: type[Component], model: str, params: dict[str, Any] | None = None, companions: Companions = None
) -> None:
    """Decode with the part: what it reads from ``StepView`` is what its ``needs()`` declared
    (undeclared reads fail, and so do declared layers it never reads), and every call returns
    the shape and dtype of its interface."""
    label = _label(cls, model)
    m, processor = _model(model)
    parts = kit_parts(cls, params, companions=companions)
    part = next(p for p in parts.components() if type(p) is cls)
    with _recording(part, label) as reads:
        _decode(m, processor, parts, make_samples(), label)
    if not isinstance(part, (LayerSelector, LogitCombiner)):
        return  # head filters and refiners read the AttentionRow or the decoder, not StepView
    declared = part.needs()
    implied = Needs(hidden=frozenset(parts.layer_selector.candidates())) if parts.layer_selector else Needs()

    def keys(needs: Needs, need: str) -> set:
        values = getattr(needs, need, ())
        return {b.name for b in values} if need == "branches" else set(values)  # a branch is read by name

    for read, need in _NEED_OF.items():
        got = {key for r, key in reads if r == read}
        allowed = keys(declared, need) | keys(implied, need)
        if got - allowed:
            raise ConformanceError(f"{label}: read {read} of {sorted(got - allowed)} without declaring Needs.{need}")
        unused = keys(declared, need) - got
        if unused:
            raise ConformanceError(
                f"{label}: declares Needs.{need} {sorted(unused)} but never reads them (the engine captures them for nothing)"
            )


def check_batch_independence(
    cls: type[Component], model: str, params: dict[str, Any] | None = None, companions: Companions = None
) -> None:
    """Greedy tokens of a batch of N equal those of N batches of 1 (fp32)."""
    label = _label(cls, model)
    m, processor = _model(model)
    samples = make_samples()
    batch = _decode(m, processor, kit_parts(cls, params, companions=companions), samples, label)
    for i, sample in enumerate(samples):
        alone = _decode(m, processor, kit_parts(cls, params, companions=companions), [sample], label)[0]
        if alone != batch[i]:
            raise ConformanceError(
                f"{label}: sample {sample.id!r} decodes to {batch[i]} in a batch of {len(samples)} but {alone} alone"
            )


def check_noop(
    cls: type[Component], model: str, noop_params: dict[str, Any] | None = None, companions: Companions = None
) -> None:
    """With its no-op parameters (default: the class's ``noop_params``) the part decodes exactly
    the vanilla tokens."""
    noop = cls.noop_params if noop_params is None else noop_params
    if noop is None:
        raise ConformanceError(f"{_label(cls)}: no noop_params declared; pass noop_params=... to check_noop")
    label = _label(cls, model) + f" with {noop}"
    m, processor = _model(model)
    samples = make_samples()
    got = _decode(m, processor, kit_parts(cls, noop, companions=companions), samples, label)
    want = _vanilla(m, processor, samples, label)
    if got != want:
        bad = next(i for i in range(len(want)) if got[i] != want[i])
        raise ConformanceError(f"{label}: no-op parameters changed sample {samples[bad].id!r}: {got[bad]} != vanilla {want[bad]}")


def check_no_layer_keeps_final(cls: type[Component], model: str, params: dict[str, Any] | None = None) -> bool:
    """A LogitCombiner that uses a layer keeps the final logits of samples whose layer is ``-1``.
    Returns False (nothing checked) for other parts and for combiners that refuse the kit's
    selector."""
    if not (issubclass(cls, LogitCombiner) and cls.uses_layer):
        return False
    label = _label(cls, model) + " with layer -1"
    try:
        parts = kit_parts(cls, params, no_layer=True)
    except _NoStack:
        return False
    m, processor = _model(model)
    samples = make_samples()
    if _decode(m, processor, parts, samples, label) != _vanilla(m, processor, samples, label):
        raise ConformanceError(f"{label}: samples without a selected layer must keep the final logits (vanilla tokens)")
    return True


def check_component(
    cls: type[Component],
    params: dict[str, Any] | None = None,
    noop_params: dict[str, Any] | None = None,
    models: list[str] | None = None,
    companions: Companions = None,
) -> list[str]:
    """Every check on every tiny model (default: all of ``TINY_MODELS``); returns what ran."""
    check_params(cls, params)
    ran = ["params"]
    noop = cls.noop_params if noop_params is None else noop_params
    for model in models or list(TINY_MODELS):
        check_needs_and_returns(cls, model, params, companions)
        check_batch_independence(cls, model, params, companions)
        ran += [f"needs+returns@{model}", f"batch@{model}"]
        if companions is None and check_no_layer_keeps_final(cls, model, params):
            ran.append(f"no-layer@{model}")
        if noop is not None:
            check_noop(cls, model, noop, companions)
            ran.append(f"noop@{model}")
    return ran


__all__ = [
    "ConformanceError",
    "FixedLayer",
    "KeepFinal",
    "check_batch_independence",
    "check_component",
    "check_needs_and_returns",
    "check_no_layer_keeps_final",
    "check_noop",
    "check_params",
    "kit_parts",
    "make_samples",
]
