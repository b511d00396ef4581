"""``mllm-refine compare``: scores of run folders side by side, with paired bootstrap intervals.

Rows are recipes, columns benchmarks (a benchmark is one ``data:`` mapping). Each cell holds the
score and, against the benchmark's baseline (the run whose recipe has no parts, or
``--baseline``), the delta with a 95% confidence interval from a paired bootstrap: the ids both
runs scored are resampled with replacement, the same resample for both runs, and the metric is
recomputed on each. An interval that contains 0 is no evidence of a difference.

When samples carry ``meta["size_bucket"]`` (the relative size of the object a question is about,
e.g. ``easy_vqa_scenes``), each benchmark also gets a table by bucket, deltas paired over the ids
of that bucket.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from mllm_refine.components import PART_KEYS
from mllm_refine.lightning.shards import PREDICTIONS
from mllm_refine.metrics.base import StatsMetric
from mllm_refine.metrics.localisation import ordered_buckets
from mllm_refine.plugin_manager import get_registry


@dataclass
class Run:
    path: Path
    name: str
    data: dict[str, Any]
    metric: str
    vanilla: bool
    records: dict[str, dict[str, Any]]
    model: str = ""  # the recipe's model.path (and dtype)

    @property
    def benchmark(self) -> str:
        return json.dumps(self.data, sort_keys=True)

    def scored(self) -> dict[str, dict[str, Any]]:
        return {i: r for i, r in self.records.items() if not r.get("error") and r.get("answers")}


def load_run(folder: str | Path) -> Run:
    path = Path(folder)
    for name in ("recipe.yaml", PREDICTIONS):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: not a run folder (no {name})")
    raw = yaml.safe_load((path / "recipe.yaml").read_text()) or {}
    records = {}
    for n, line in enumerate((path / PREDICTIONS).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path / PREDICTIONS}:{n}: not a JSON line ({e.msg})") from e
            records[str(rec["id"])] = rec
    scores = path / "scores.json"
    metric = json.loads(scores.read_text())["metric"] if scores.is_file() else str(raw.get("metric") or "exact_match")
    vanilla = not any(raw.get(k) for k in PART_KEYS)
    model = raw.get("model") or {}
    model_text = f"{model.get('path', '?')}" + (f" ({model['dtype']})" if model.get("dtype") else "")
    return Run(path, str(raw.get("name") or path.name), dict(raw.get("data") or {}), metric, vanilla, records, model_text)


def _flow(mapping: dict[str, Any]) -> str:
    """A mapping as one line of YAML flow style, for a table cell."""
    return ", ".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}" for k, v in mapping.items())


def _metric(name: str) -> Any:
    m = get_registry().get("metric", name).obj()
    m.distributed_available_fn = lambda: False
    return m


def score(run: Run, ids: list[str] | None = None) -> float | None:
    recs = run.scored()
    ids = list(recs) if ids is None else ids
    if not ids:
        return None
    m = _metric(run.metric)
    m.update([recs[i]["prediction"] or "" for i in ids], [recs[i]["answers"] for i in ids])
    value = m.compute()
    if isinstance(value, dict):
        value = value.get(getattr(m, "primary", ""), next(iter(value.values())))
    return float(value)


def paired_bootstraps(
    metric: StatsMetric, a: torch.Tensor, b: torch.Tensor, resamples: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """Per value of the metric: the delta ``metric(a) - metric(b)`` over paired per-sample stats
    ``(N, K)`` and its 95% interval, every value from the same resamples."""
    n = a.shape[0]
    full_a, full_b = metric.reduce(a.sum(0)), metric.reduce(b.sum(0))
    g = torch.Generator().manual_seed(seed)
    chunk = max(1, min(resamples, 20_000_000 // max(n, 1)))
    deltas: dict[str, list[torch.Tensor]] = {k: [] for k in full_a}
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        idx = torch.randint(n, (r, n), generator=g)
        weights = torch.zeros(r, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(r, n, dtype=torch.float64))
        ra, rb = metric.reduce(weights @ a), metric.reduce(weights @ b)  # {value: (r,)} each
        for k in deltas:
            deltas[k].append(ra[k] - rb[k])
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    out = {}
    for k, d in deltas.items():
        lo, hi = torch.quantile(torch.cat(d), q).tolist()
        out[k] = (float(full_a[k] - full_b[k]), lo, hi)
    return out


def paired_bootstrap(
    metric: StatsMetric, a: torch.Tensor, b: torch.Tensor, resamples: int = 1000, seed: int = 0, value: str | None = None
) -> tuple[float, float, float]:
    """Delta ``metric(a) - metric(b)`` over paired per-sample stats ``(N, K)`` and its 95% interval
    (of the headline value, or of ``value`` among the metric's values)."""
    out = paired_bootstraps(metric, a, b, resamples, seed)
    name = value or metric.primary
    return out[name] if name in out else next(iter(out.values()))


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _signed(value: float) -> str:
    return f"{100 * value:+.1f}".replace("-", "−")


def table(runs: list[Run], baselines: list[Run], resamples: int = 1000, seed: int = 0) -> str:
    """The Markdown comparison of ``runs`` (scores in percent)."""
    benches: dict[str, list[Run]] = {}
    for run in runs:
        benches.setdefault(run.benchmark, []).append(run)
    labels: dict[str, str] = {}
    for key, group in benches.items():
        name = str(group[0].data.get("name", "manifest"))
        taken = sum(1 for v in labels.values() if v.split(" #")[0] == name)
        labels[key] = name if not taken else f"{name} #{taken + 1}"
    base: dict[str, Run] = {}
    for b in baselines:
        if b.benchmark not in benches:
            raise ValueError(f"--baseline {b.path}: its data matches none of the runs compared")
        base[b.benchmark] = b
    for key, group in benches.items():
        if key in base:
            continue
        plain = [r for r in group if r.vanilla]
        if len(plain) > 1:
            paths = ", ".join(str(r.path) for r in plain)
            raise ValueError(f"{labels[key]}: several runs without parts ({paths}); pick one with --baseline")
        if plain:
            base[key] = plain[0]
    names = [r.name for r in runs]
    row_of = {id(r): (r.name if names.count(r.name) == 1 else f"{r.name} ({r.path.name})") for r in runs}
    rows: list[str] = []
    for r in runs:
        if row_of[id(r)] not in rows:
            rows.append(row_of[id(r)])
    cells: dict[tuple[str, str], str] = {}
    notes = []
    for key, group in benches.items():
        ref = base.get(key)
        for r in group:
            text = _cell(score(r))
            if ref is not None and r is not ref:
                text += " " + _delta(r, ref, resamples, seed)
            elif r is ref:
                text += " (baseline)"
            cells[(row_of[id(r)], key)] = text
        metric = group[0].metric
        notes.append(f"- {labels[key]}: {metric}; baseline {'none' if ref is None else f'{ref.name} ({ref.path})'}")
        models = sorted({r.model for r in group})
        if len(models) > 1:
            notes.append(f"- {labels[key]}: the runs use {len(models)} models ({'; '.join(models)}): deltas compare models too")
    header = "| recipe | " + " | ".join(f"{labels[k]} ({benches[k][0].metric})" for k in benches) + " |"
    lines = [header, "|---" * (len(benches) + 1) + "|"]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(cells.get((row, k), "") for k in benches) + " |")
    method = f"paired bootstrap 95% CI ({resamples} resamples, seed {seed}) over the ids both runs scored"
    lines += ["", f"Scores in percent; deltas to the baseline with a {method}.", *notes]
    for key, group in benches.items():
        lines += values_table(group, base.get(key), labels[key], row_of, resamples, seed)
        lines += size_table(group, base.get(key), labels[key], row_of, resamples, seed)
    lines += ["", "Runs:", "", "| folder | recipe | model | data |", "|---|---|---|---|"]
    lines += [f"| {r.path} | {r.name} | {r.model} | {_flow(r.data)} |" for r in runs]
    return "\n".join(lines) + "\n"


def size_buckets(run: Run) -> dict[str, list[str]]:
    """Scored ids per ``meta["size_bucket"]`` (small, medium, large first)."""
    groups: dict[str, list[str]] = {}
    for i, r in run.scored().items():
        bucket = (r.get("meta") or {}).get("size_bucket")
        if bucket is not None:
            groups.setdefault(str(bucket), []).append(i)
    return {b: groups[b] for b in ordered_buckets(set(groups))}


def size_table(
    group: list[Run], base: Run | None, label: str, row_of: dict[int, str], resamples: int, seed: int
) -> list[str]:
    """Lines of the by-size table of one benchmark (none when no run's samples carry a bucket)."""
    buckets = {id(r): size_buckets(r) for r in group}
    names = ordered_buckets({b for groups in buckets.values() for b in groups})
    if not names:
        return []

    def cell(r: Run, b: str) -> str:
        ids = buckets[id(r)].get(b, [])
        if base is not None and r is not base and ids:
            return f"{_cell(score(r, ids))} {_delta(r, base, resamples, seed, set(ids))}"
        text = f"{_cell(score(r, ids) if ids else None)} (n={len(ids)})"
        return text + " (baseline)" if r is base else text

    return _sub_table(f"By target size ({label}; meta.size_bucket):", names, group, row_of, cell)


def _sub_table(title: str, names: list[str], group: list[Run], row_of: dict[int, str], cell: Callable[[Run, str], str]) -> list[str]:
    """Lines of a table under the main one: a row per run, a column per name, ``cell(run, name)``."""
    lines = ["", title, "", "| recipe | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {row_of[id(r)]} | " + " | ".join(cell(r, n) for n in names) + " |" for r in group]
    return lines


def values_table(
    group: list[Run], base: Run | None, label: str, row_of: dict[int, str], resamples: int, seed: int
) -> list[str]:
    """Lines of the table of every value of a metric that has several (POPE's precision, recall,
    F1 and yes-ratio beside its accuracy), each with its delta; none for a one-value metric."""
    metric = _metric(group[0].metric)
    if not isinstance(metric, StatsMetric) or any(r.metric != group[0].metric for r in group):
        return []
    per_run = {}
    for r in group:
        stats = _stats(r, metric, list(r.scored()))
        per_run[id(r)] = {k: float(v) for k, v in metric.reduce(stats.sum(0)).items()}
    names = list(next(iter(per_run.values())))
    if len(names) < 2:
        return []
    deltas = {id(r): _value_deltas(r, base, metric, names, resamples, seed) for r in group if base is not None and r is not base}

    def cell(r: Run, name: str) -> str:
        text = _cell(per_run[id(r)][name])
        if id(r) in deltas:
            return f"{text} {deltas[id(r)][name]}"
        return text + " (baseline)" if r is base else text

    return _sub_table(f"Every value of {group[0].metric} ({label}):", names, group, row_of, cell)


def _paired(run: Run, base: Run, only: set[str] | None) -> list[str] | str:
    """The ids both runs scored (within ``only``), or why there is no delta."""
    if run.metric != base.metric:
        return f"(metric {run.metric} vs baseline {base.metric}: no delta)"
    a, b = run.scored(), base.scored()
    ids = [i for i in b if i in a and (only is None or i in only)]
    return ids or "(no ids in common with the baseline)"


def _stats(run: Run, metric: StatsMetric, ids: list[str]) -> torch.Tensor:
    recs = run.scored()
    return metric.sample_stats([recs[i]["prediction"] or "" for i in ids], [recs[i]["answers"] for i in ids])


def _ci(d: float, lo: float, hi: float, n: int) -> str:
    return f"({_signed(d)}, 95% CI {_signed(lo)} … {_signed(hi)}, n={n})"


def _delta(run: Run, base: Run, resamples: int, seed: int, only: set[str] | None = None) -> str:
    ids = _paired(run, base, only)
    if isinstance(ids, str):
        return ids
    m = _metric(run.metric)
    if not isinstance(m, StatsMetric):
        d = (score(run, ids) or 0.0) - (score(base, ids) or 0.0)
        return f"({_signed(d)}, n={len(ids)}, no CI for this metric)"
    return _ci(*paired_bootstrap(m, _stats(run, m, ids), _stats(base, m, ids), resamples, seed), len(ids))


def _value_deltas(run: Run, base: Run, metric: StatsMetric, names: list[str], resamples: int, seed: int) -> dict[str, str]:
    """``{value: delta text}`` for every value of ``metric``, from one bootstrap."""
    ids = _paired(run, base, None)
    if isinstance(ids, str):
        return dict.fromkeys(names, ids)
    out = paired_bootstraps(metric, _stats(run, metric, ids), _stats(base, metric, ids), resamples, seed)
    return {k: _ci(*out[k], len(ids)) for k in names}


def compare(
    folders: list[str], baselines: Sequence[str] = (), output: str | None = None, resamples: int = 1000, seed: int = 0
) -> tuple[str, Path]:
    """Build the table for ``folders`` and write it to ``output`` (default: ``compare.md`` next to
    the first run)."""
    if resamples < 1:
        raise ValueError("--resamples: must be at least 1")
    runs = [load_run(f) for f in folders]
    base_runs = [load_run(f) for f in baselines]
    known = {r.path.resolve() for r in runs}
    runs += [b for b in base_runs if b.path.resolve() not in known]
    base_runs = [next((r for r in runs if r.path.resolve() == b.path.resolve()), b) for b in base_runs]
    text = table(runs, base_runs, resamples, seed)
    path = Path(output) if output else Path(folders[0]).resolve().parent / "compare.md"
    path.write_text(text, encoding="utf-8")
    return text, path
