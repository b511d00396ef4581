"""The data module: a registered dataset, minus the ids already written, split across ranks."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mllm_refine.data.sample import Sample
from mllm_refine.lightning.shards import adopt_predictions, written_ids
from mllm_refine.plugin_manager import get_registry
from mllm_refine.recipes.schema import RecipeError, check_value, suggest


def build_dataset(data: dict[str, Any], source: str = "recipe") -> Any:
    """The registered dataset ``data["name"]`` built from the other keys, checked by name."""
    params = dict(data)
    name = params.pop("name", "manifest")
    registry = get_registry()
    names = registry.names("dataset")
    if name not in names:
        raise RecipeError(f"{source}: data.name: unknown dataset {name!r}{suggest(name, names)}; choices: {', '.join(names)}")
    factory = registry.get("dataset", name).obj
    accepted = inspect.signature(factory).parameters
    hints = _hints(factory)
    for key, value in params.items():
        if key not in accepted:
            raise RecipeError(f"{source}: data.{key}: unknown parameter of dataset {name!r}{suggest(key, list(accepted))}")
        if key in hints:
            check_value(value, hints[key], f"{source}: data.{key}")
    limit = params.get("limit")
    if isinstance(limit, int) and limit < 0:
        raise RecipeError(f"{source}: data.limit: expected a count of samples (0 or more), got {limit}")
    return factory(**params)


def _hints(factory: Any) -> dict[str, Any]:
    """The factory's parameter types, where they can be resolved (else none are checked)."""
    try:
        return typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:
        return {}


def check_unique_ids(dataset: Any, ids: list[str], source: str) -> None:
    """Refuse a dataset in which two samples share an id (``1`` and ``"1"`` too), naming both."""
    first: dict[str, int] = {}
    for i, sid in enumerate(ids):
        if sid in first:
            where = getattr(dataset, "where", lambda n: f"sample #{n + 1}")
            raise RecipeError(f"{source}: data: sample id {sid!r} is used twice: {where(first[sid])} and {where(i)}")
        first[sid] = i


def sample_ids(dataset: Any) -> list[str]:
    """Every sample's id, without loading images where the dataset offers ``sample_id``."""
    if hasattr(dataset, "sample_id"):
        return [str(dataset.sample_id(i)) for i in range(len(dataset))]
    ids = []
    for i in range(len(dataset)):
        try:
            ids.append(str(dataset[i].id))
        except Exception:  # an unreadable sample is reported when it is decoded
            ids.append(str(i))
    return ids


@dataclass
class Unreadable:
    """A sample the dataset could not produce; it becomes an error record."""

    id: str
    error: BaseException


class _Todo(Dataset):
    def __init__(self, dataset: Any, indices: list[int], ids: list[str]) -> None:
        self.dataset, self.indices, self.ids = dataset, indices, ids

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Sample | Unreadable:
        i = self.indices[k]
        try:
            return self.dataset[i]
        except Exception as e:
            return Unreadable(self.ids[i], e)


def keep_list(batch: list[Any]) -> list[Any]:
    """Samples hold PIL images: a batch stays a plain list."""
    return batch


class RecipeData(pl.LightningDataModule):
    """Builds the dataset and reads the ids already written when created, so every rank agrees on
    what is left before any rank writes. Rank ``r`` of ``w`` takes every ``w``-th pending sample."""

    def __init__(self, data: dict[str, Any], output: Path, batch_size: int, num_workers: int = 0, source: str = "recipe") -> None:
        super().__init__()
        self.dataset = build_dataset(data, source)
        self.ids = sample_ids(self.dataset)
        check_unique_ids(self.dataset, self.ids, source)
        adopt_predictions(Path(output))
        self.done = written_ids(Path(output))
        self.todo = [i for i, sid in enumerate(self.ids) if sid not in self.done]
        self.batch_size, self.num_workers = batch_size, num_workers

    def rank_indices(self) -> list[int]:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return self.todo[rank::world]

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # PIL images; the decoder moves the processed tensors itself

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            _Todo(self.dataset, self.rank_indices(), self.ids),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=keep_list,
        )
