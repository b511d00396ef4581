"""Per-rank JSONL shards: append-only, repaired on resume, merged once with every id checked.

A shard's last line without a newline is a write cut short by a kill: readers ignore it and the
writer cuts it off before appending, so the sample simply runs again.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

SHARDS = "shards"
PREDICTIONS = "predictions.jsonl"


class MergeError(ValueError):
    """The shards do not hold every sample id exactly once."""


def shard_path(output: Path, rank: int) -> Path:
    return output / SHARDS / f"rank-{rank:05d}.jsonl"


def shard_files(output: Path) -> list[Path]:
    return sorted((output / SHARDS).glob("*.jsonl"))


def repair_tail(path: Path) -> int:
    """Cut a torn last line off ``path``; returns the bytes removed."""
    if not path.exists():
        return 0
    size = path.stat().st_size
    with path.open("rb") as f:
        data = f.read()
    keep = data.rfind(b"\n") + 1
    if keep < size:
        with path.open("r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
    return size - keep


def read_shard(path: Path) -> Iterator[dict[str, Any]]:
    """Complete records of one shard, skipping a torn last line."""
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    for n, line in enumerate(complete.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise MergeError(f"{path}:{n}: not a JSON line ({e.msg})") from e
        if not isinstance(record, dict) or "id" not in record:
            raise MergeError(f"{path}:{n}: a record needs an 'id'")
        yield record


def written_ids(output: Path) -> set[str]:
    return {str(r["id"]) for path in shard_files(output) for r in read_shard(path)}


def adopt_predictions(output: Path) -> None:
    """A folder with ``predictions.jsonl`` but no shards (written before shards existed, or its
    shards deleted) keeps its records: the file becomes a shard, so nothing is rerun or lost."""
    merged = output / PREDICTIONS
    if merged.exists() and not shard_files(output):
        target = output / SHARDS / "previous.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(merged.read_bytes())


def drop_error_records(output: Path) -> int:
    """Remove the error records from every shard (each rewritten whole, then swapped in), so a
    rerun decodes those samples again; returns how many were removed."""
    removed = 0
    for path in shard_files(output):
        records = list(read_shard(path))
        keep = [r for r in records if not r.get("error")]
        if len(keep) == len(records):
            continue
        write_records(path, keep)
        removed += len(records) - len(keep)
    return removed


def record_line(record: dict[str, Any]) -> str:
    """One JSON line; text that UTF-8 cannot hold (an unpaired surrogate read from a ``\\ud800``
    escape) is written as the same escape, so the record is kept as it was read."""
    line = json.dumps(record, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record)
    return line + "\n"


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Write ``records`` as JSON lines to ``path`` (see ``write_file``)."""
    write_file(path, "".join(record_line(r) for r in records))


def write_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file swapped in whole: a failure (disk
    full) names the file and leaves the old one as it was, with no partial file behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"{path}: cannot write ({e.strerror or e})") from e


def merge(output: Path, ids: list[str]) -> tuple[list[dict[str, Any]], int]:
    """Write ``predictions.jsonl`` in dataset order from the shards; every id of ``ids`` must
    appear exactly once. Returns the records and how many shard records were left out because
    their id is not in ``ids`` (a rerun over fewer samples)."""
    found: dict[str, dict[str, Any]] = {}
    where: dict[str, list[str]] = {}
    dupes = []
    for path in shard_files(output):
        for record in read_shard(path):
            sid = str(record["id"])
            if sid in found and found[sid] != record:
                dupes.append(sid)  # an identical copy (a batch written twice) is the same record
            found.setdefault(sid, record)
            where.setdefault(sid, []).append(path.name)
    if dupes:
        counts = Counter(where[dupes[0]])
        raise MergeError(
            f"{output / SHARDS}: {len(set(dupes))} sample id(s) written more than once with different records, e.g. "
            f"{dupes[0]!r} in " + ", ".join(f"{name} x{c}" for name, c in counts.items())
            + " (two runs wrote into this folder); rerun with --restart to keep it aside and start afresh"
        )
    missing = [sid for sid in ids if sid not in found]
    if missing:
        raise MergeError(f"{output / SHARDS}: {len(missing)} sample id(s) have no record, e.g. {missing[0]!r}; rerun to complete")
    records = [found[sid] for sid in ids]
    write_records(output / PREDICTIONS, records)
    return records, len(found) - len(records)
