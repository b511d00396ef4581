"""Run a recipe over a dataset through Lightning's predict loop, then merge and score.

Every rank appends records to its own shard (``shards/rank-NNNNN.jsonl``) as batches finish;
rank 0 merges them into ``predictions.jsonl`` (each sample id exactly once) and writes
``scores.json``, ``summary.json`` and the resolved ``recipe.yaml``. A rerun into the same folder
resumes: ids already in a shard are skipped. A sample that fails gets a record with ``error``
set to one line; the job goes on.
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from mllm_refine.data.sample import answer_texts
from mllm_refine.lightning.data import RecipeData, build_dataset
from mllm_refine.lightning.identity import check_fingerprint, fingerprint, has_records, sample_digests, set_aside, write_fingerprint
from mllm_refine.lightning.lock import FolderLock
from mllm_refine.lightning.shards import PREDICTIONS, drop_error_records, merge, write_file, written_ids
from mllm_refine.lightning.trainer import trainer_config
from mllm_refine.metrics.localisation import localisation_scores, ordered_buckets
from mllm_refine.models import check_model_path, check_remote_code
from mllm_refine.plugin_manager import get_registry
from mllm_refine.recipes.loader import Recipe, build
from mllm_refine.recipes.schema import RecipeError, suggest

__all__ = ["PREDICTIONS", "RunSummary", "build_dataset", "run_recipe", "run_sweep", "sweep_recipes", "write_scores"]


@dataclass
class RunSummary:
    output: str
    recipe: str
    total: int
    written: int
    skipped: int
    failed: int
    fallbacks: int
    score: float | None
    metric: str
    seconds: float
    tokens: int
    tokens_per_second: float
    seed: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)


def metric_name(recipe: Recipe, dataset: Any) -> str:
    """The recipe's ``metric:``, else the dataset's suggestion, else exact match; checked."""
    name = recipe.raw.get("metric") or getattr(dataset, "default_metric", None) or "exact_match"
    names = get_registry().names("metric")
    if name not in names:
        raise RecipeError(
            f"{recipe.source}: metric: unknown metric {name!r}{suggest(str(name), names)}; choices: {', '.join(names)}"
        )
    if getattr(get_registry().get("metric", name).obj(), "scores_maps", False):  # a factory: build one to ask
        raise RecipeError(
            f"{recipe.source}: metric: {name!r} scores importance maps, not answers; runs report it in scores.json's "
            "localisation whenever the recipe writes a map and the samples carry a target box"
        )
    return str(name)


class PeerLost(OSError):
    """Another DDP rank died; this one cannot finish the run (a rerun resumes)."""


@contextmanager
def peer_lost_is_one_line() -> Iterator[None]:
    """A collective that finds a DDP peer gone (gloo: connection closed) becomes ``PeerLost``."""
    try:
        yield
    except RuntimeError as e:
        text = str(e)
        if "closed by peer" not in text and "Connection reset" not in text:
            raise
        raise PeerLost(f"a DDP rank stopped ({text.split('] ', 1)[-1].split('.')[0]}); what was written is kept, rerun to resume") from e


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def run_recipe(
    recipe: Recipe,
    output: str | Path,
    fail_fast: bool = False,
    log: Callable[[str], None] = print,
    models: dict[str, Any] | None = None,
    restart: bool = False,
    retry_failed: bool = False,
) -> RunSummary | None:
    """Decode ``recipe``'s data into ``output``; returns the summary on rank 0, None elsewhere.
    ``models`` caches loaded ``(model, processor)`` pairs across the runs of a sweep.
    ``restart``: move a folder that holds records aside first (``<output>.old-N``);
    ``retry_failed``: decode again the samples whose records are errors."""
    check_remote_code(recipe.model, recipe.source)
    check_model_path(recipe.model["path"])
    cfg = trainer_config(recipe.raw, recipe.source)
    out = Path(output)
    rank0 = _is_rank_zero()  # ranks a ddp launch starts later find the folder as rank 0 left it
    lock = _take_folder(out, recipe.name, restart, log) if rank0 else None
    try:
        return _run_in(recipe, out, cfg, rank0, fail_fast, log, models, retry_failed)
    finally:
        if lock is not None:
            lock.release()


def _take_folder(out: Path, name: str, restart: bool, log: Callable[[str], None]) -> FolderLock:
    """Lock ``out`` for this run (moving a previous run aside first with ``restart``)."""
    out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out).acquire()
    if restart and has_records(out):
        lock.release()
        log(f"{name}: --restart: the previous run in {out} is kept as {set_aside(out)}")
        out.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(out).acquire()
    return lock


def _run_in(
    recipe: Recipe,
    out: Path,
    cfg: Any,
    rank0: bool,
    fail_fast: bool,
    log: Callable[[str], None],
    models: dict[str, Any] | None,
    retry_failed: bool,
) -> RunSummary | None:
    from mllm_refine.lightning.module import RefineModule
    from mllm_refine.lightning.provenance import device_info, git_state, versions
    from mllm_refine.lightning.stopping import Stopped
    from mllm_refine.lightning.trainer import make_trainer, quiet_lightning
    from mllm_refine.lightning.writer import ShardWriter

    if rank0 and retry_failed:
        log(f"{recipe.name}: --retry-failed: {drop_error_records(out)} error record(s) will be decoded again")
    data = RecipeData(recipe.data, out, recipe.decode.batch_size, cfg.num_workers, recipe.source)
    metric = metric_name(recipe, data.dataset)
    counts = tuple(getattr(data.dataset, "count_params", ("limit",)))
    current = fingerprint(recipe.raw, recipe.name, sample_digests(data.dataset, data.ids), counts)
    check_fingerprint(out, current, data.done)
    if rank0:
        write_fingerprint(out, current)
        # the name goes in too: a rerun from this file alone must write the same records
        write_file(out / "recipe.yaml", yaml.safe_dump({"name": recipe.name, **recipe.raw}, sort_keys=False))
        done = len(data.ids) - len(data.todo)
        log(f"{recipe.name}: {len(data.ids)} samples, {done} already done, {len(data.todo)} to run -> {out}")
    quiet_lightning()
    trainer = make_trainer(cfg, out, [ShardWriter(out)], recipe.source)
    models = {} if models is None else models
    key = json.dumps(recipe.model, sort_keys=True)
    module = RefineModule(recipe, fail_fast, loaded=models.get(key))
    start = time.perf_counter()
    if data.todo:
        try:
            with peer_lost_is_one_line():
                trainer.predict(module, datamodule=data, return_predictions=False)
        except Stopped as e:  # every rank stops after its batch; rank 0 speaks for the run
            written = written_ids(out)
            done = sum(1 for sid in data.ids if sid in written)
            e.args = (f"{recipe.name}: stopped by {e.name} after {done} of {len(data.ids)} samples; rerun to resume",)
            e.quiet = trainer.global_rank != 0
            raise
        models[key] = module.loaded
        # Rank 0 merges next: wait until every rank has closed its shard (ranks whose share was
        # empty never ran the predict hooks, so the wait is here rather than in a hook).
        with peer_lost_is_one_line():
            trainer.strategy.barrier("mllm_refine.shards_written")
        rank0 = trainer.global_rank == 0
    if not rank0:
        return None
    end = time.perf_counter()
    seconds, decoding = end - start, end - (module.decode_started or start)
    records, left_out = merge(out, data.ids)
    if left_out:
        log(f"{recipe.name}: {left_out} record(s) in {out / 'shards'} are not in this dataset and were left out of {PREDICTIONS}")
    new = [r for r in records if str(r["id"]) not in data.done]
    tokens = sum(len(r.get("tokens") or []) for r in new)
    scores = write_scores(out, metric, records)
    summary = RunSummary(
        output=str(out), recipe=recipe.name, total=len(records), written=len(new), skipped=len(records) - len(new),
        failed=sum(1 for r in records if r.get("error")), fallbacks=sum(r.get("fallbacks") or 0 for r in new),
        score=None if scores is None else scores["score"], metric=metric, seconds=round(seconds, 3), tokens=tokens,
        tokens_per_second=round(tokens / decoding, 2) if data.todo and decoding > 0 else 0.0, seed=recipe.decode.seed,
        provenance={"versions": versions(), "git": git_state(),
                    "device": device_info(trainer, module.model) if data.todo else None},
    )  # fmt: skip
    write_file(out / "summary.json", json.dumps(asdict(summary), indent=2))
    return summary


def _score(metric: Any, preds: list[str], refs: list[list[str]]) -> tuple[float, dict[str, float]]:
    metric.distributed_available_fn = lambda: False  # rank 0 scores the merged file on its own
    metric.update(preds, refs)
    value = metric.compute()
    if isinstance(value, dict):
        values = {k: float(v) for k, v in value.items()}
        primary = getattr(metric, "primary", None) or next(iter(values))
        return values[primary], values
    return float(value), {}


def _breakdown(factory: Any, scored: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """The score per value of ``meta[key]`` over the records that have one."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in scored:
        value = (r.get("meta") or {}).get(key)
        if value is not None:
            groups.setdefault(str(value), []).append(r)
    order = ordered_buckets(set(groups)) if key == "size_bucket" else sorted(groups)
    return {
        g: {"score": _score_records(factory, groups[g])[0], "n": len(groups[g])}
        for g in order
    }  # fmt: skip


def _score_records(factory: Any, records: list[dict[str, Any]]) -> tuple[float, dict[str, float]]:
    """A fresh metric of ``factory`` over the records' predictions and reference answers."""
    return _score(factory(), [str(r["prediction"] or "") for r in records], [answer_texts(r["answers"]) for r in records])


def write_scores(out: Path, metric: str, records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Score every record with reference answers (error records are counted, not scored) and
    write ``scores.json``, broken down by ``meta["type"]`` and by ``meta["size_bucket"]`` where
    samples have them; ``localisation`` scores every importance map the records carry against
    ``meta["target_box"]`` (``metrics/localisation.py``)."""
    factory = get_registry().get("metric", metric).obj
    scored = [r for r in records if not r.get("error") and r.get("answers")]
    if not scored:
        return None
    score, values = _score_records(factory, scored)
    by_type = _breakdown(factory, scored, "type")
    by_size = _breakdown(factory, scored, "size_bucket")
    result = {"metric": metric, "score": score, "scored": len(scored), "errors": sum(1 for r in records if r.get("error"))}
    if values:
        result["values"] = values
    if len(by_type) > 1:
        result["by_type"] = by_type
    if by_size:
        result["by_size"] = by_size
    localisation = localisation_scores(records)
    if localisation:
        result["localisation"] = localisation
    write_file(out / "scores.json", json.dumps(result, indent=2))
    return result


def _merge_over(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into ``base``: mappings merge key by key, anything else (lists included)
    replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_over(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def sweep_recipes(recipe: Recipe) -> list[Recipe]:
    """The recipes of ``sweep:`` (each item merged over the base), or ``[recipe]`` without one."""
    items = recipe.raw.get("sweep")
    if not items:
        return [recipe]
    if not isinstance(items, list):
        raise RecipeError(f"{recipe.source}: sweep: expected a list of partial recipes")
    base = {k: v for k, v in recipe.raw.items() if k != "sweep"}
    recipes, names = [], set()
    for i, item in enumerate(items):
        where = f"{recipe.source}: sweep[{i}]"
        if not isinstance(item, dict):
            raise RecipeError(f"{where}: expected a mapping (a partial recipe)")
        if "sweep" in item:
            raise RecipeError(f"{where}.sweep: a sweep item cannot hold another sweep")
        raw = _merge_over(base, item)
        raw["name"] = str(item.get("name") or f"{recipe.name}-{i}")
        if raw["name"] in names:
            raise RecipeError(f"{where}.name: {raw['name']!r} is used twice; each run needs its own folder")
        names.add(raw["name"])
        recipes.append(build(raw, where))
    return recipes


def run_sweep(
    recipe: Recipe,
    output: str | Path | None,
    fail_fast: bool = False,
    log: Callable[[str], None] = print,
    restart: bool = False,
    retry_failed: bool = False,
) -> list[RunSummary]:
    """Run the recipe, or each item of its sweep into ``output/<item name>`` (default
    ``runs/<recipe name>[/<item name>]``); one model load serves items that share it."""
    recipes = sweep_recipes(recipe)
    swept = len(recipes) > 1 or recipe.raw.get("sweep")
    root = Path(output) if output else Path("runs") / recipe.name
    for r in recipes:  # every item's model is checked before the first one loads
        check_remote_code(r.model, r.source)
        check_model_path(r.model["path"])
    models: dict[str, Any] = {}
    summaries = []
    for r in recipes:
        s = run_recipe(r, root / r.name if swept else root, fail_fast, log, models, restart, retry_failed)
        if s is not None:
            summaries.append(s)
    return summaries
