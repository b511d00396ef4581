"""A run folder's identity: what decides its predictions, recorded so a rerun resumes only a run
of the same configuration.

``fingerprint.json`` holds the resolved recipe without the keys that cannot change an answer
(``description``, ``decode.batch_size``, ``data.limit`` and the dataset's other ``count_params``,
``trainer`` but for its precision), the
model's identity (its name or folder, dtype and, for a folder, a digest of its config and weight
files), the versions that change tokens and, for datasets that offer ``sample_digest`` (the
manifest: a digest of each sample's line), a digest per sample id. A rerun whose fingerprint
differs is refused with the keys (or the samples) that differ; ``--restart`` moves the old folder
aside and starts afresh.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

from mllm_refine.lightning.shards import write_file

FINGERPRINT = "fingerprint.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


class RunMismatch(ValueError):
    """The output folder holds a run of another configuration."""


def model_identity(model: dict[str, Any]) -> dict[str, Any]:
    """The recipe's ``model`` block, with a digest of the checkpoint folder when it is one."""
    ident = {"path": model.get("path"), "dtype": model.get("dtype", "float32"), "trust_remote_code": bool(model.get("trust_remote_code"))}
    folder = Path(str(model.get("path"))).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file():
        h = hashlib.sha256((folder / "config.json").read_bytes())
        for f in sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        ident["folder"] = h.hexdigest()[:16]
    return ident


def token_versions() -> dict[str, str | None]:
    """The versions that can change a token: mllm-refine, torch and transformers."""
    from mllm_refine.lightning.provenance import versions

    found = versions()
    return {name: found[name] for name in ("mllm-refine", "torch", "transformers")}


def sample_digests(dataset: Any, ids: list[str]) -> dict[str, str] | None:
    """``{id: digest}`` of each sample's source, where the dataset can say (``sample_digest``)."""
    if not hasattr(dataset, "sample_digest"):
        return None
    return {sid: dataset.sample_digest(i) for i, sid in enumerate(ids)}


def fingerprint(
    raw: dict[str, Any], name: str, samples: dict[str, str] | None = None, count_params: tuple[str, ...] = ("limit",)
) -> dict[str, Any]:
    """What decides the records of a run of the resolved recipe ``raw`` named ``name``;
    ``samples``: a digest per sample id (``sample_digests``); ``count_params``: the dataset's
    parameters that only say how many samples to take (its ``count_params``, else ``limit``)."""
    recipe = copy.deepcopy(raw)
    recipe["name"] = name
    recipe.pop("description", None)
    recipe.pop("sweep", None)
    precision = (recipe.pop("trainer", None) or {}).get("precision")
    if precision is not None:
        recipe["trainer"] = {"precision": precision}
    (recipe.get("decode") or {}).pop("batch_size", None)
    for key in count_params:
        (recipe.get("data") or {}).pop(key, None)
    recipe["model"] = model_identity(recipe.get("model") or {})
    out: dict[str, Any] = {"recipe": recipe, "versions": token_versions()}
    if samples is not None:
        out["samples"] = samples
    return out


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: value}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each leaf that differs, recipe keys first."""
    a, b = _flat(old), _flat(new)
    missing = object()
    keys = sorted(set(a) | set(b), key=lambda k: (not k.startswith("recipe."), k))
    out = []
    for k in keys:
        x, y = a.get(k, missing), b.get(k, missing)
        if x != y:
            shown = k.removeprefix("recipe.")
            out.append(f"{shown}: {'(unset)' if x is missing else json.dumps(x)} -> {'(unset)' if y is missing else json.dumps(y)}")
    return out


def has_records(out: Path) -> bool:
    return any((out / "shards").glob("*.jsonl")) or (out / "predictions.jsonl").exists()


def check_fingerprint(out: Path, current: dict[str, Any], done: set[str]) -> None:
    """Refuse to resume ``out`` when it holds records of another configuration, or records of
    samples (ids in ``done``) whose source changed since they were decoded."""
    path = out / FINGERPRINT
    if not path.is_file() or not has_records(out):
        return  # a new folder, or one written before fingerprints: its records are adopted
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunMismatch(f"{path}: unreadable ({e}); rerun with a new --output, or --restart to keep the old folder aside") from e
    way_out = "rerun with a new --output, or --restart to keep the old folder aside"
    diff = differences({k: v for k, v in old.items() if k != "samples"}, {k: v for k, v in current.items() if k != "samples"})
    if diff:
        more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
        raise RunMismatch(f"{out} holds a run of another configuration: {diff[0]}{more}; {way_out}")
    before, now = old.get("samples") or {}, current.get("samples") or {}
    changed = [sid for sid in now if sid in done and sid in before and before[sid] != now[sid]]
    if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        raise RunMismatch(f"{out}: sample {changed[0]!r}{more} changed in the data since it was decoded; {way_out}")


def write_fingerprint(out: Path, current: dict[str, Any]) -> None:
    """Record ``current``; digests of samples outside this run (a smaller limit) are kept."""
    path = out / FINGERPRINT
    if "samples" in current and path.is_file():
        try:
            kept = json.loads(path.read_text(encoding="utf-8")).get("samples") or {}
        except (OSError, ValueError):
            kept = {}
        current = {**current, "samples": {**kept, **current["samples"]}}
    write_file(path, json.dumps(current, indent=2, sort_keys=True) + "\n")


def set_aside(out: Path) -> Path | None:
    """Move ``out`` to ``<out>.old-N`` (the first free N) so a run can start afresh; None when
    there was nothing to move."""
    if not out.exists():
        return None
    n = 1
    while out.with_name(f"{out.name}.old-{n}").exists():
        n += 1
    target = out.with_name(f"{out.name}.old-{n}")
    out.rename(target)
    return target


__all__ = ["FINGERPRINT", "RunMismatch", "check_fingerprint", "differences", "fingerprint", "sample_digests", "set_aside", "write_fingerprint"]
