"""Which answer each block's logit lens favours on yes/no questions, and what a layer contrast makes of it.

A yes/no answer is one token, and the log-probability margin ``log p(yes) - log p(no)`` of a
row is its logit margin (``log_softmax`` subtracts one constant per row). So DoLa's
``log_softmax(z_N) - log_softmax(z_l)`` and DualPD's ``z_N - z_l`` both answer with the sign
of ``m_N - m_l``, where ``m_l`` is block ``l``'s lens margin (whenever both words are plausible).
Per block this prints the lens margin on the questions whose answer is yes and on those whose
answer is no, how well it separates them (AUROC), and the share of questions the contrast
with that block would answer yes; the final logits' row is the baseline. With ``--run DIR``
(a finished run of a layer contrast on the same data) it also takes, per question, the layer
that run chose and its lens (with or without the norm, as its combiner reads it), and compares
the answers the margins predict with the answers the run gave.

    python scripts/yes_no_lens.py recipes/scenes_qwen/vanilla.yaml \\
        data.name=easy_vqa_scenes_pope data.subset=adversarial --limit 400
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mllm_refine.compare import load_run
from mllm_refine.components import Needs, StepView
from mllm_refine.functional import plausible
from mllm_refine.metrics.pope import yes_no
from mllm_refine.models import load_model
from mllm_refine.recipes import load_recipe
from mllm_refine.recipes.binding import decoder_for
from mllm_refine.run import build_dataset


def word_id(tokenizer, word: str) -> int:
    """The single token a one-word answer decodes from (first token after the chat prompt)."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"answer word {word!r} is {len(ids)} tokens, not one")
    return ids[0]


def auroc(score: torch.Tensor, truth: torch.Tensor) -> float:
    """P(score of a yes question > score of a no question), ties counting half (Mann-Whitney).
    Computed on the scores themselves: margins of hundreds of logits stay apart (a sigmoid of
    them, as classification metrics apply to values outside 0..1, would tie them all)."""
    pos, neg = score[truth == 1], score[truth == 0]  # (P,), (Q,)
    if not len(pos) or not len(neg):
        return float("nan")
    diff = pos[:, None] - neg[None, :]  # (P, Q)
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def margins(
    recipe: str, overrides: list[str], limit: int | None, batch: int, alpha: float
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Per question at the first answer step: ``final`` (N,) margin of z_N, ``lens`` and
    ``lens_raw`` (N, L+1) margins of every layer's lens with and without the final norm,
    ``truth`` (N,) 1 where the answer is yes, ``both`` (N,) whether both words are plausible at
    ``alpha``; ``ids`` the question ids in order."""
    r = load_recipe(recipe, [*overrides, "decode.max_new_tokens=1"])
    model, processor = load_model(**r.model)
    decoder = decoder_for(r, model, processor)
    L = decoder.adapter.info().num_layers
    decoder.needs = decoder.needs | Needs(hidden=frozenset(range(L + 1)))
    yes, no = word_id(decoder.tokenizer, "yes"), word_id(decoder.tokenizer, "no")
    data = build_dataset(r.data, r.source)
    n = min(len(data), limit) if limit else len(data)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("final", "lens", "lens_raw", "truth", "both")}
    ids: list[str] = []

    head = decoder.model.get_output_embeddings()
    # Only two columns of the lens are read: the head's yes row minus its no row (no bias here).
    if getattr(head, "bias", None) is not None:
        raise ValueError("the output head has a bias: the margin needs its full lens")
    w = (head.weight[yes] - head.weight[no]).float()  # (D,)

    def observe(view: StepView, logits: torch.Tensor) -> None:
        if view.step:
            return
        h = torch.stack([view.hidden(l) for l in range(L + 1)], 1)  # (B, L+1, D)
        out["lens"].append(decoder.adapter.final_norm(h).float() @ w)  # (B, L+1)
        out["lens_raw"].append(h.float() @ w)  # (B, L+1)
        out["final"].append(view.logits[:, yes] - view.logits[:, no])  # (B,)
        keep = plausible(view.logits, alpha)  # (B, V)
        out["both"].append(keep[:, yes] & keep[:, no])  # (B,)

    for start in range(0, n, batch):
        samples = [data[i] for i in range(start, min(n, start + batch))]
        decoder.generate(samples, observe=observe)
        out["truth"].append(torch.tensor([s.answers[0] == "yes" for s in samples]))
        ids.extend(str(s.id) for s in samples)
        print(f"{start + len(samples)}/{n}", flush=True)
    return {k: torch.cat(v).float() for k, v in out.items()}, ids


def against_run(m: dict[str, torch.Tensor], ids: list[str], run: Path) -> dict[str, float | str]:
    """The margins at the layer ``run`` chose for each question, beside that run's answers."""
    combiner = load_recipe(str(run / "recipe.yaml")).parts.logit_combiner
    lens = m["lens" if getattr(combiner, "final_norm", True) else "lens_raw"]  # (N, L+1)
    records = load_run(run).records
    rows = [i for i, q in enumerate(ids) if q in records and (records[q].get("choices") or {}).get("layer")]
    if not rows:
        raise ValueError(f"{run}: no answered question of this data names a chosen layer")
    index = torch.tensor(rows)
    layer = torch.tensor([records[ids[i]]["choices"]["layer"][0] for i in rows])  # (n,)
    contrast = m["final"][index] - lens[index, layer]  # (n,) m_N - m_l at the chosen layer
    said_yes = torch.tensor([yes_no(records[ids[i]]["prediction"] or "") == "yes" for i in rows])  # as POPE reads it
    predicted = contrast > 0
    return {
        "run": run.name,
        "n": len(rows),
        "predicted_yes": float(100 * predicted.float().mean()),
        "run_yes": float(100 * said_yes.float().mean()),
        "agreement": float(100 * (predicted == said_yes).float().mean()),
        "auroc": float(auroc(contrast, m["truth"][index].long())),
    }


def summary(m: dict[str, torch.Tensor]) -> list[dict[str, float | str]]:
    """One row per reading (the final logits, then every layer with and without the norm)."""
    truth = m["truth"].long()
    rows: list[dict[str, float | str]] = []

    def row(name: str, margin: torch.Tensor, contrast: torch.Tensor) -> None:
        rows.append({
            "reading": name,
            "mean_yes": float(margin[truth == 1].mean()),
            "mean_no": float(margin[truth == 0].mean()),
            "std": float(margin.std()),
            "auroc": float(auroc(margin, truth)),
            "contrast_yes": float(100 * (contrast > 0).float().mean()),
            "contrast_auroc": float(auroc(contrast, truth)),
        })

    row("final z_N", m["final"], m["final"])
    for key, label in (("lens", "norm"), ("lens_raw", "no norm")):
        for l in range(m[key].shape[1]):
            margin = m[key][:, l]  # (N,)
            row(f"{l} ({label})", margin, m["final"] - margin)
    return rows


def table(rows: list[dict[str, float | str]], both: float) -> str:
    head = [
        "| reading | margin, answer yes | margin, answer no | std | AUROC | m_N − m_l > 0 (%) | AUROC of m_N − m_l |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    body = [
        f"| {r['reading']} | {r['mean_yes']:+.2f} | {r['mean_no']:+.2f} | {r['std']:.2f} | {r['auroc']:.3f} "
        f"| {r['contrast_yes']:.1f} | {r['contrast_auroc']:.3f} |"
        for r in rows
    ]
    return "\n".join([*head, *body, "", f"both words plausible (alpha): {both:.1f} % of questions"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE recipe overrides")
    ap.add_argument("--limit", type=int, default=None, help="first N questions")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=0.1, help="plausibility cut of the contrasts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--run", action="append", default=[], help="a finished layer-contrast run on the same data")
    ap.add_argument("--output", default=None, help="write the rows as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    m, ids = margins(a.recipe, a.overrides, a.limit, a.batch, a.alpha)
    rows = summary(m)
    both = float(100 * m["both"].mean())
    runs = [against_run(m, ids, Path(r)) for r in a.run]
    if a.output:
        kept = {k: v.tolist() for k, v in m.items()}  # the margins themselves, to read again
        result = {"rows": rows, "both_plausible": both, "n": len(m["truth"]), "runs": runs, "ids": ids, "margins": kept}
        Path(a.output).write_text(json.dumps(result, indent=1))
    print(table(rows, both))
    if runs:
        print("\n| run | n | yes, from the margins (%) | yes, the run's answers (%) | agreement (%) | AUROC of m_N − m_l |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in runs:
            print(f"| {r['run']} | {r['n']} | {r['predicted_yes']:.1f} | {r['run_yes']:.1f} | {r['agreement']:.1f} | {r['auroc']:.3f} |")


if __name__ == "__main__":
    main()
