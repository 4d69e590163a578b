"""Process-group helpers for training under ``torchrun``.

``torchrun`` exports RANK / WORLD_SIZE / LOCAL_RANK; a plain ``python`` run has none of them and
trains in a single process. Backend: NCCL for CUDA, Gloo for CPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar, cast

import torch
import torch.distributed as dist

_T = TypeVar("_T")


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA GPU")
    return torch.device(requested)


def init_distributed(requested_device: str) -> DistContext:
    """Join the process group described by torchrun's environment (no-op for one process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def available_cpu_cores() -> int:
    """Cores this process may run on (its affinity mask: a container's or taskset's share), not
    the machine's total that ``os.cpu_count`` reports."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cpu_training_threads(env: Mapping[str, str] | None = None, available_cores: int | None = None) -> tuple[int, str]:
    """``(intra-op threads, why)`` for one CPU training process.

    An explicit ``OMP_NUM_THREADS`` wins. Otherwise the available cores are shared by the
    ``LOCAL_WORLD_SIZE`` processes torchrun starts on this node (1 without torchrun): torch's
    default (sized from the machine's cores, in every process) oversubscribes a shared or
    multi-process box, and each step then waits on descheduled threads.
    """
    env = os.environ if env is None else env
    explicit = env.get("OMP_NUM_THREADS", "").strip()
    if explicit:
        outer = explicit.split(",")[0].strip()  # "4,2" is OpenMP's nested form: 4 at the top level
        if not outer.isdigit() or int(outer) < 1:
            raise ValueError(f"OMP_NUM_THREADS={explicit!r} is not a positive integer")
        return int(outer), f"OMP_NUM_THREADS={explicit}"
    cores = available_cores if available_cores is not None else available_cpu_cores()
    local_raw = env.get("LOCAL_WORLD_SIZE", "").strip() or "1"
    if not local_raw.isdigit() or int(local_raw) < 1:
        raise ValueError(f"LOCAL_WORLD_SIZE={local_raw!r} is not a positive integer")
    local = int(local_raw)
    return max(1, cores // local), f"{cores} available core(s) / {local} local training process(es)"


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_gather_objects(obj: _T, ctx: DistContext) -> list[_T]:
    """Gather one picklable object per rank (a list of one element without DDP)."""
    if not ctx.enabled:
        return [obj]
    gathered: list[object] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return cast("list[_T]", gathered)  # every slot now holds one rank's obj
