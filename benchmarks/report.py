"""Ratios, the JSON record and the Markdown tables of a decode-cost run."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

BLOCK = "results"  # the Markdown block a run fills: between <!-- results:begin --> and <!-- results:end -->
CONTROL = "vanilla_rows"  # vanilla with every block's row taken through the probe path
# Per-token time of the decode-time recipes (parts inside the answer pass, no extra forward;
# PAI's guidance and VCD run a second prompt every step) against vanilla, at batch 1 and at the
# large batch; their peak memory; flat cost in answer length.
TOKEN_TARGETS, MEMORY_TARGET, LENGTH_TARGET = (1.10, 1.05), 1.10, 1.10
TARGETED = (
    "contrastive_attention", "deco", "deco_selector_dualpd_heads", "dola", "dola_hellinger", "dualpd",
    "dualpd_heads", "dualpd_layer", "dualpd_vrga", "pai_dualpd_layer", "vrga",
)  # fmt: skip
SPEEDUP_TARGET = 3.0  # reference style / ours, per token, 600+ token sequences
END_TO_END_TARGETS = {"vicrop": 2.5, "vcd": 2.2}  # recipe-name prefix -> end-to-end x vanilla at batch 1


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def paired(runs: list[float] | None, base: list[float] | None) -> float | None:
    """Median over timing rounds of ``runs[r] / base[r]``: each round ran every configuration
    once, close in time, so a machine that drifts between rounds shifts both sides of a ratio."""
    if not runs or not base or len(runs) != len(base):
        return None
    return round(statistics.median(a / b for a, b in zip(runs, base)), 3)


def median_ci(xs: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval of the median of ``xs``: the order statistics
    ``x_(k)`` and ``x_(n+1-k)`` with the largest ``k`` whose binomial(n, 1/2) tail
    ``P(S < k)`` is at most ``(1 - level) / 2``; None when ``n`` is too small for ``level``."""
    n, tail = len(xs), (1.0 - level) / 2
    k, below = 0, 0.0  # below: P(S < k + 1) once k is accepted
    while k < n // 2:
        below += math.comb(n, k) / 2**n  # P(S = k)
        if below > tail:
            break
        k += 1
    if k == 0:
        return None
    s = sorted(xs)
    return round(s[k - 1], 3), round(s[n - k], 3)


def paired_ci(runs: list[float] | None, base: list[float] | None) -> tuple[float, float] | None:
    """``median_ci`` of the per-round ratios ``runs[r] / base[r]`` (None where ``paired`` is)."""
    if not runs or not base or len(runs) != len(base):
        return None
    return median_ci([a / b for a, b in zip(runs, base)])


def add_ratios(result: dict[str, Any]) -> None:
    """Fill ``vs_vanilla`` (and ``vs_control``) of every recipe row and ``vs_ours`` of every reference row."""
    rows = {r["recipe"]: r for r in result["recipes"]}
    for field, base_name in (("vs_vanilla", "vanilla"), ("vs_control", CONTROL)):
        base = rows.get(base_name)
        for r in result["recipes"]:
            if "error" in r or base is None or "error" in base:
                continue
            r[field] = {}
            for batch, run in r["runs"].items():
                ref = base["runs"].get(batch)
                if ref:
                    r[field][batch] = {
                        key: ratio(run[key], ref[key])
                        for key in ("per_token_ms", "prefill_ms", "end_to_end_ms", "peak_mb", "peak_delta_mb")
                    }
                    runs_ms, base_ms = run.get("per_token_runs_ms"), ref.get("per_token_runs_ms")
                    r[field][batch]["per_token_paired"] = paired(runs_ms, base_ms)
                    r[field][batch]["per_token_paired_ci"] = paired_ci(runs_ms, base_ms)
                    if field == "vs_vanilla" and run.get("bracket_runs_ms"):  # vanilla ran just before and after each run
                        r[field][batch]["per_token_bracketed"] = paired(runs_ms, run["bracket_runs_ms"])
                        r[field][batch]["per_token_bracketed_ci"] = paired_ci(runs_ms, run["bracket_runs_ms"])
    for ref in result["reference"]:
        ours = rows.get(ref["recipe"], {}).get("runs", {}).get("1")
        if ours and "error" not in ref:
            ref["vs_ours"] = {
                key: ratio(ref[key], ours[key]) for key in ("per_token_ms", "prefill_ms", "peak_mb", "peak_delta_mb")
            }


def _token(v: dict[str, Any]) -> float | None:
    """The per-token ratio a table shows: against the vanilla runs beside each run where they
    ran (``--bracket``), else paired over rounds, else the ratio of medians."""
    return v.get("per_token_bracketed") or v.get("per_token_paired") or v.get("per_token_ms")


def _token_ci(v: dict[str, Any]) -> tuple[float, float] | None:
    """The 95 % interval of ``_token``'s ratio, where it has one."""
    if v.get("per_token_bracketed"):
        return v.get("per_token_bracketed_ci")
    return v.get("per_token_paired_ci") if v.get("per_token_paired") else None


def _fmt_ci(ci: Any) -> str:
    return f"{ci[0]:.2f}-{ci[1]:.2f}" if ci else "-"


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def recipe_table(result: dict[str, Any]) -> list[str]:
    n = result["settings"]["batch"]
    lines = [
        f"| recipe | prefill ms | ms/token b1 | tok/s b1 | ms/token b{n} | tok/s b{n} | end-to-end ms b1 | "
        f"peak MiB b1 (+delta) | peak MiB b{n} (+delta) | x vanilla token b1 / b{n} | 95 % interval b1 / b{n} | x vanilla e2e b1 | "
        f"x vanilla peak b1 / b{n} | x {CONTROL} token b1 / b{n} |",
        "|---|" + "---:|" * 13,
    ]
    for r in result["recipes"]:
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r['error']} |" + " |" * 12)
            continue
        b1, b16 = r["runs"].get("1", {}), r["runs"].get(str(n), {})
        v, c = r.get("vs_vanilla", {}), r.get("vs_control", {})
        v1, v16 = v.get("1", {}), v.get(str(n), {})
        c1, c16 = c.get("1", {}), c.get(str(n), {})
        lines.append(
            f"| {r['recipe']} | {_fmt(b1.get('prefill_ms'))} | {_fmt(b1.get('per_token_ms'), 2)} | "
            f"{_fmt(b1.get('tokens_per_s'))} | {_fmt(b16.get('per_token_ms'), 2)} | {_fmt(b16.get('tokens_per_s'))} | "
            f"{_fmt(b1.get('end_to_end_ms'))} | {_fmt(b1.get('peak_mb'))} (+{_fmt(b1.get('peak_delta_mb'))}) | "
            f"{_fmt(b16.get('peak_mb'))} (+{_fmt(b16.get('peak_delta_mb'))}) | "
            f"{_fmt(_token(v1), 2)} / {_fmt(_token(v16), 2)} | {_fmt_ci(_token_ci(v1))} / {_fmt_ci(_token_ci(v16))} | "
            f"{_fmt(v1.get('end_to_end_ms'), 2)} | {_fmt(v1.get('peak_mb'), 2)} / {_fmt(v16.get('peak_mb'), 2)} | "
            f"{_fmt(_token(c1), 2)} / {_fmt(_token(c16), 2)} |"
        )
    return lines


def throughput_table(result: dict[str, Any]) -> list[str]:
    """Tokens/s of each recipe at batch 1 and at the large batch beside the reference style at its
    best (batch 1, KV cache kept) where one exists, with peak memory."""
    n = result["settings"]["batch"]
    best = {r["recipe"]: r for r in result["reference"] if r.get("mode") == "cache" and "error" not in r}
    lines = [
        f"| recipe | tok/s b1 | tok/s b{n} | reference style tok/s (b1, cache) | ours b1 / reference | "
        f"ours b{n} / reference | peak MiB b1 | peak MiB b{n} | reference peak MiB |",
        "|---|" + "---:|" * 8,
    ]
    for r in result["recipes"]:
        if "error" in r:
            continue
        b1, bn = r["runs"].get("1", {}), r["runs"].get(str(n), {})
        ref = best.get(r["recipe"])
        ref_tps = 1e3 / ref["per_token_ms"] if ref and ref.get("per_token_ms") else None
        t1, tn = b1.get("tokens_per_s"), bn.get("tokens_per_s")
        lines.append(
            f"| {r['recipe']} | {_fmt(t1)} | {_fmt(tn)} | {_fmt(ref_tps)} | "
            f"{_fmt(t1 / ref_tps if t1 and ref_tps else None, 2)} | {_fmt(tn / ref_tps if tn and ref_tps else None, 2)} | "
            f"{_fmt(b1.get('peak_mb'))} | {_fmt(bn.get('peak_mb'))} | {_fmt(ref['peak_mb'] if ref else None)} |"
        )
    return lines


def reference_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| recipe | reference style | prefill ms | ms/token | peak MiB (+delta) | x ours token | x ours prefill | "
        "x ours peak (delta) | same tokens |",
        "|---|---|" + "---:|" * 6 + "---|",
    ]
    for r in result["reference"]:
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r['mode']} | {r['error']} |" + " |" * 6)
            continue
        v = r.get("vs_ours", {})
        lines.append(
            f"| {r['recipe']} | {r['mode']} | {_fmt(r['prefill_ms'])} | {_fmt(r['per_token_ms'], 2)} | "
            f"{_fmt(r['peak_mb'])} (+{_fmt(r['peak_delta_mb'])}) | {_fmt(v.get('per_token_ms'), 2)} | "
            f"{_fmt(v.get('prefill_ms'), 2)} | {_fmt(v.get('peak_mb'), 2)} ({_fmt(v.get('peak_delta_mb'), 2)}) | "
            f"{'yes' if r['agree'] else 'NO'} ({r['compared']} tokens) |"
        )
    return lines


def memory_table(result: dict[str, Any]) -> list[str]:
    rows = result.get("memory_scaling") or []
    if not rows:
        return []
    lines = [
        f"Peak memory above the loaded model, recipe `{rows[0]['recipe']}`, batch 1, {result['settings']['memory_tokens']} new tokens:",
        "",
        "| prompt tokens | ours MiB | reference style MiB | reference / ours | ours MiB per 1k tokens | same tokens |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        per_k = r["ours_delta_mb"] / (r["prompt_tokens"] / 1000) if r.get("ours_delta_mb") else None
        lines.append(
            f"| {r['prompt_tokens']} | {_fmt(r.get('ours_delta_mb'))} | {_fmt(r.get('reference_delta_mb'))} | "
            f"{_fmt(ratio(r.get('reference_delta_mb'), r.get('ours_delta_mb')), 2)} | {_fmt(per_k)} | "
            f"{'yes' if r.get('agree') else 'NO'} |"
        )
    return lines


def profile_table(result: dict[str, Any]) -> list[str]:
    prof = result.get("profile")
    if not prof:
        return []
    lines = [
        f"torch.profiler, recipe `{prof['recipe']}`, batch 1, {prof['steps']} decode steps: "
        f"engine regions (inclusive) and the top operators (self time).",
        "",
        "| region or operator | self ms | total ms | calls | share of decode |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in prof["rows"]:
        lines.append(
            f"| {row['name']} | {_fmt(row['self_ms'], 2)} | {_fmt(row['total_ms'], 2)} | {row['calls']} | {_fmt(100 * row['share'], 1)} % |"
        )
    return lines


def length_table(result: dict[str, Any]) -> list[str]:
    rows = result["length"]
    early, late = rows[0]["early_token"], rows[0]["late_token"]
    lines = [
        f"| recipe | ms/token at token {early} | ms/token at token {late} | token {late} / token {early} | "
        f"line through every step: at {early} | at {late} | {late} / {early} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {_fmt(r['early_ms'], 2)} | {_fmt(r['late_ms'], 2)} | {_fmt(r['late_over_early'], 2)} | "
            f"{_fmt(r.get('early_line_ms'), 2)} | {_fmt(r.get('late_line_ms'), 2)} | {_fmt(r.get('line_late_over_early'), 2)} |"
        )
    return lines


def _length_ratio(row: dict[str, Any]) -> float:
    """The answer-length ratio a target reads: the line's where the run has one (robust to a slow
    spell over one window), else the windows'."""
    return row.get("line_late_over_early") or row["late_over_early"]


def _verdict(tok: list[float | None], cis: list[tuple[float, float] | None], labels: list[str]) -> str:
    """``met`` or ``missed`` by the per-token ratios ``tok`` against ``TOKEN_TARGETS``, and where
    a 95 % interval of ``cis`` crosses its target, that the run does not settle it."""
    ok = [t is not None and t <= limit for t, limit in zip(tok, TOKEN_TARGETS)]
    unsettled = [
        label for label, ci, limit in zip(labels, cis, TOKEN_TARGETS) if ci is not None and ci[0] <= limit < ci[1]
    ]  # fmt: skip
    word = "met" if all(ok) else "missed"
    return f"{word}, {' and '.join(unsettled)} interval across the target" if unsettled else word


def targets(result: dict[str, Any]) -> list[str]:
    """One line per target with the measured number (per-token ratios with their 95 % interval)."""
    out = []
    batch = str(result["settings"]["batch"])
    for r in result["recipes"]:
        if r["recipe"] not in TARGETED or "error" in r:
            continue
        v, c = r.get("vs_vanilla", {}), r.get("vs_control", {})
        tok = [_token(v.get(b, {})) for b in ("1", batch)]
        medians = [v.get(b, {}).get("per_token_ms") for b in ("1", batch)]
        ctl = [_token(c.get(b, {})) for b in ("1", batch)]
        mem = [v.get(b, {}).get("peak_mb") for b in ("1", batch)]
        cis = [_token_ci(v.get(b, {})) for b in ("1", batch)]
        ok_mem = all(m is not None and m <= MEMORY_TARGET for m in mem)
        control = f", {_fmt(ctl[0], 2)}x / {_fmt(ctl[1], 2)}x {CONTROL}" if c else ""
        out.append(
            f"- `{r['recipe']}`: per token {_fmt(tok[0], 2)}x ({_fmt_ci(cis[0])}) / {_fmt(tok[1], 2)}x ({_fmt_ci(cis[1])}) "
            f"vanilla (ratio of medians {_fmt(medians[0], 2)}x / {_fmt(medians[1], 2)}x{control}) (b1 / b{batch}, "
            f"target <= {TOKEN_TARGETS[0]} / {TOKEN_TARGETS[1]}: {_verdict(tok, cis, ['b1', 'b' + batch])}); peak {_fmt(mem[0], 2)}x / {_fmt(mem[1], 2)}x "
            f"(target <= {MEMORY_TARGET}: {'met' if ok_mem else 'missed'})"
        )
    for r in result["recipes"]:
        limit = next((v for k, v in END_TO_END_TARGETS.items() if r["recipe"].startswith(k)), None)
        if limit is None or "error" in r:
            continue
        e2e = r.get("vs_vanilla", {}).get("1", {}).get("end_to_end_ms")
        tok = _token(r.get("vs_vanilla", {}).get("1", {}))
        ok = e2e is not None and e2e <= limit
        out.append(
            f"- `{r['recipe']}`: end to end {_fmt(e2e, 2)}x vanilla at batch 1, per token {_fmt(tok, 2)}x "
            f"(target <= {limit}: {'met' if ok else 'missed'})"
        )
    for row in result.get("length", []):
        ok = _length_ratio(row) <= LENGTH_TARGET
        out.append(
            f"- `{row['recipe']}`: token {row['late_token']} costs {_fmt(_length_ratio(row), 2)}x token "
            f"{row['early_token']} on the line through every step ({_fmt(row['late_over_early'], 2)}x between the two "
            f"windows' medians) (target <= {LENGTH_TARGET}: {'met' if ok else 'missed'})"
        )
    for ref in result["reference"]:
        if "error" in ref or "vs_ours" not in ref:
            continue
        s = ref["vs_ours"]["per_token_ms"]
        if ref["mode"] == "cache":  # the same work per step as ours: a comparison, not a target
            out.append(
                f"- `{ref['recipe']}` vs reference style (cache, {ref['prompt_tokens']} prompt tokens): ours "
                f"{_fmt(s, 2)}x faster per token at batch 1, tokens {'agree' if ref['agree'] else 'DIFFER'}"
            )
            continue
        ok = s is not None and s >= SPEEDUP_TARGET and ref["agree"] and ref["prompt_tokens"] >= 600
        out.append(
            f"- `{ref['recipe']}` vs reference style ({ref['mode']}, {ref['prompt_tokens']} prompt tokens): ours "
            f"{_fmt(s, 2)}x faster per token, tokens {'agree' if ref['agree'] else 'DIFFER'} "
            f"(target >= {SPEEDUP_TARGET}x: {'met' if ok else 'missed'})"
        )
    return out


def markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        f"Run `{result['command']}`",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores{', GPU ' + m['gpu'] if m['gpu'] else ''}; "
        f"torch threads set to {m['torch_threads']}; load average at start {m['load_average']}",
        f"- versions: Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}",
        f"- model: {s['model']} ({s['dtype']}, {s['prompt_tokens']} prompt tokens of which {s['image_tokens']} "
        f"image tokens); {s['max_new_tokens']} new tokens at batch 1 ({s['repeats']} repeats after a warm-up), "
        f"{s['batch_tokens']} at batch {s['batch']}; medians; memory: {s['memory_method']}",
        "- per-token ratios: the median over rounds of each run against "
        + ("the mean of the vanilla runs just before and after it at batch 1 (`--bracket`), against " if s.get("bracket") else "")
        + "the round's vanilla run otherwise, with a distribution-free 95 % interval of that median",
        "",
        "### Recipes against vanilla",
        "",
        *recipe_table(result),
        "",
        "### Throughput",
        "",
        *throughput_table(result),
        "",
        "### Reference style against ours (batch 1)",
        "",
        *reference_table(result),
        "",
    ]
    if result.get("memory_scaling"):
        lines += ["### Memory against sequence length", "", *memory_table(result), ""]
    if result.get("length"):
        lines += ["### Cost against answer length (batch 1)", "", *length_table(result), ""]
    if result.get("profile"):
        lines += ["### Profile of one refined decode", "", *profile_table(result), ""]
    lines += ["### Targets", "", *targets(result), ""]
    return "\n".join(lines)


def write(result: dict[str, Any], json_path: Path, md_path: Path, name: str = BLOCK) -> None:
    """Write the JSON; put the tables between the ``name`` block's markers of the Markdown file."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    block = f"{begin}\n{markdown(result)}\n{end}"
    text = md_path.read_text() if md_path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text)
