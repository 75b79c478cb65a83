"""DDP helpers: start from ``torchrun`` environment variables, shard data, gather predictions.

``torchrun --nproc-per-node N -m deepfake_detector train ...`` sets ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; without them everything runs in one process. NCCL is
used on GPUs, gloo on CPUs. Only rank 0 writes files; every rank computes the same metrics from the
gathered predictions so early-stopping decisions agree without extra messages.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)

__all__ = [
    "DistInfo",
    "init_distributed",
    "cleanup_distributed",
    "is_main",
    "barrier",
    "all_gather_objects",
    "broadcast_object",
    "all_reduce_max",
    "BalancedDistributedSampler",
    "ShardSampler",
]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""
    owns_group: bool = False  # we initialised the process group (so we tear it down)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's env vars (no-op when WORLD_SIZE is 1 or unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dist.get_backend(), False)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = torch.device("cuda", local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    log.info("DDP: rank %d/%d (local %d), backend %s", rank, world, local_rank, backend)
    return DistInfo(rank, world, local_rank, backend, True)


def cleanup_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_objects(obj: Any, info: DistInfo) -> list:
    """Every rank's ``obj`` (picklable builtins/arrays), in rank order; ``[obj]`` without DDP."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. an error message from a rank-0-only check)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_max(value: float, info: DistInfo, device: torch.device) -> float:
    """Largest value over ranks: used so every rank agrees to skip a non-finite step."""
    if not info.enabled:
        return value
    t = torch.tensor([float(value)], device=device if info.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def broadcast_buffers(module: torch.nn.Module, info: DistInfo, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP syncs buffers at the start of each forward, so after the last step of an epoch every rank
    holds statistics updated by its own last batch; without this, ranks would validate (and save)
    slightly different models.
    """
    if not info.enabled:
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)


def all_reduce_flags(flags: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise max of a small flag tensor over ranks (gloo reduces on the CPU)."""
    if not info.enabled:
        return flags
    t = flags if info.backend == "nccl" else flags.cpu()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


class BalancedDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (shuffle seeded by ``seed + epoch``) that can also draw by sample weights.

    With ``weights`` it draws ``len(dataset)`` indices with replacement in proportion to the weights
    (balanced classes), from a generator seeded by ``seed + epoch``, identically on every rank, then
    gives each rank its slice. One sampler class for 1 or N processes keeps training deterministic
    and resumable; ``WeightedRandomSampler`` has no DDP support.
    """

    def __init__(
        self,
        dataset: Any,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        weights: Optional[Sequence[float]] = None,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )
        self.weights = None if weights is None else torch.as_tensor(list(weights), dtype=torch.double)

    def __iter__(self) -> Iterator[int]:
        if self.weights is None:
            return super().__iter__()
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        indices = torch.multinomial(self.weights, len(self.dataset), replacement=True, generator=g).tolist()
        indices += indices[: self.total_size - len(indices)]
        return iter(indices[self.rank : self.total_size : self.num_replicas])


class EpochTaggedSampler(torch.utils.data.Sampler):
    """Yields ``(index, epoch)`` from a sampler with ``set_epoch``: the epoch travels WITH each index.

    Persistent DataLoader workers hold their own copy of the dataset, so ``dataset.set_epoch`` in the
    main process would never reach them; an epoch carried by the index does, and keeps per-epoch
    augmentation exact (and resumable) while the workers live for the whole run.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((int(i), epoch) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class ShardSampler(torch.utils.data.Sampler):
    """Evaluation sharding without padding: rank r gets indices r, r+N, ... (every sample exactly once)."""

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.n, self.num_replicas, self.rank = n, num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return max(0, math.ceil((self.n - self.rank) / self.num_replicas))
