"""Training batches: each epoch's order is a fixed function of (seed, epoch), so a resume continues with
exactly the batches the interrupted run would have seen; collated on the training thread or by workers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


def epoch_batches(objective, dataset, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Index lists of one epoch's micro-batches; a fixed function of (seed, epoch) so resume is exact."""
    return objective.batch_order(dataset, batch_size, torch.Generator().manual_seed(seed * 1000 + epoch))


def rows(dataset, indices: list[int]) -> list[dict[str, Any]]:
    columns = dataset[indices]
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


class TrainSplit(torch.utils.data.Dataset):
    """The training split as a DataLoader reads it: one `rows` call per batch (`__getitems__`)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        return rows(self.dataset, indices)


def host_batches(dataset, collate, index_lists: list[list[int]], workers: int, pin: bool) -> Iterator[dict]:
    """The collated batches of `index_lists`, in order. workers 0: collated on the training thread when
    asked for (exactly where the loop used to collate, so random draws keep their order); else by
    DataLoader worker processes, ahead of the step that needs them."""
    if workers == 0:
        return (collate(rows(dataset, indices)) for indices in index_lists)
    return iter(
        torch.utils.data.DataLoader(
            TrainSplit(dataset),
            batch_sampler=index_lists,
            collate_fn=collate,
            num_workers=workers,
            pin_memory=pin,
            prefetch_factor=2,
        )
    )


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Pinned host memory and a non-blocking copy on GPUs: the copy overlaps the previous step's work."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor
