"""The ``PrototypeBank`` artifact: prototypes per stage, their owner classes, the allocation,
and its safetensors file format (what the cluster step writes and training loads)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..config import CPIConfig
from .allocation import AllocationRow, PrototypeBankError, allocate_prototypes, format_allocation_table

logger = logging.getLogger(__name__)

BANK_FORMAT_VERSION = 1
_METADATA_KEY = "mccl_prototype_bank"


@dataclass
class PrototypeBank:
    """Per-stage class-owned prototypes: the CPI artifact that training loads.

    ``prototypes[stage]``: float32 ``[K_s, C_s]``, unit rows. ``owners[stage]``: int64 ``[K_s]``
    class id per prototype, sorted by class. ``allocation``: the frequency-aware table.
    ``metadata``: JSON-serialisable provenance (source ``cpi``/``random``, config, patch counts).
    """

    stages: tuple[str, ...]
    prototypes: dict[str, Tensor]
    owners: dict[str, Tensor]
    allocation: tuple[AllocationRow, ...]
    num_classes: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stages = tuple(self.stages)
        self.allocation = tuple(self.allocation)
        self.validate()

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(int(self.prototypes[s].shape[1]) for s in self.stages)

    def num_prototypes(self, stage: str) -> int:
        return int(self.prototypes[stage].shape[0])

    def validate(self, source: str = "prototype bank") -> None:
        """Check shapes, unit norm and owner ids; raises :class:`PrototypeBankError`."""
        if not self.stages:
            raise PrototypeBankError(f"{source}: no stages")
        if len(self.allocation) != self.num_classes:
            raise PrototypeBankError(
                f"{source}: allocation has {len(self.allocation)} rows for {self.num_classes} classes"
            )
        for stage in self.stages:
            if stage not in self.prototypes or stage not in self.owners:
                raise PrototypeBankError(f"{source}: stage {stage!r} lacks prototypes or owners")
            protos, owners = self.prototypes[stage], self.owners[stage]
            if protos.ndim != 2 or owners.ndim != 1 or protos.shape[0] != owners.shape[0]:
                raise PrototypeBankError(
                    f"{source}: stage {stage!r} has prototypes {tuple(protos.shape)} and owners "
                    f"{tuple(owners.shape)}; expected [K, C] and [K]"
                )
            if protos.dtype != torch.float32 or owners.dtype != torch.int64:
                raise PrototypeBankError(
                    f"{source}: stage {stage!r} expects float32 prototypes and int64 owners, got "
                    f"{protos.dtype} / {owners.dtype}"
                )
            if not torch.isfinite(protos).all():
                raise PrototypeBankError(f"{source}: stage {stage!r} has non-finite prototypes")
            norms = protos.norm(dim=1)
            if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
                raise PrototypeBankError(f"{source}: stage {stage!r} prototypes are not unit norm")
            if owners.numel() and (owners.min() < 0 or owners.max() >= self.num_classes):
                raise PrototypeBankError(f"{source}: stage {stage!r} owner ids outside [0, {self.num_classes})")
            orphans = sorted(set(range(self.num_classes)) - set(owners.tolist()))
            if orphans:
                raise PrototypeBankError(f"{source}: stage {stage!r} classes {orphans} own no prototype")

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (tensors + JSON metadata); no pickle involved."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, Tensor] = {}
        for stage in self.stages:
            tensors[f"prototypes.{stage}"] = self.prototypes[stage].detach().float().cpu().contiguous()
            tensors[f"owners.{stage}"] = self.owners[stage].detach().long().cpu().contiguous()
        header = {
            "format_version": BANK_FORMAT_VERSION,
            "stages": list(self.stages),
            "num_classes": self.num_classes,
            "allocation": [asdict(r) for r in self.allocation],
            "metadata": self.metadata,
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={_METADATA_KEY: json.dumps(header)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PrototypeBank:
        """Load and validate a bank written by :meth:`save`; clear errors for bad files."""
        path = Path(path)
        if not path.is_file():
            raise PrototypeBankError(f"prototype bank file {path} does not exist (run the CPI step first)")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                raw_meta = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise PrototypeBankError(f"prototype bank file {path} is not a readable safetensors file: {exc}") from exc
        if _METADATA_KEY not in raw_meta:
            raise PrototypeBankError(f"prototype bank file {path} lacks the {_METADATA_KEY!r} header")
        try:
            header = json.loads(raw_meta[_METADATA_KEY])
            version = header["format_version"]
            stages = tuple(header["stages"])
            num_classes = int(header["num_classes"])
            allocation = tuple(AllocationRow(**row) for row in header["allocation"])
            metadata = dict(header.get("metadata", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise PrototypeBankError(f"prototype bank file {path}: malformed header ({exc})") from exc
        if version != BANK_FORMAT_VERSION:
            raise PrototypeBankError(
                f"prototype bank file {path}: format version {version}, expected {BANK_FORMAT_VERSION}"
            )
        missing = [key for s in stages for key in (f"prototypes.{s}", f"owners.{s}") if key not in tensors]
        if missing:
            raise PrototypeBankError(f"prototype bank file {path}: missing tensors {missing}")
        try:
            return cls(
                stages,
                {s: tensors[f"prototypes.{s}"] for s in stages},
                {s: tensors[f"owners.{s}"] for s in stages},
                allocation,
                num_classes,
                metadata,
            )
        except PrototypeBankError as exc:
            raise PrototypeBankError(f"prototype bank file {path}: {exc}") from exc


def random_prototype_bank(
    stage_channels: Mapping[str, int],
    class_counts: Sequence[int] | np.ndarray,
    cfg: CPIConfig,
    class_names: Sequence[str] | None = None,
) -> PrototypeBank:
    """ "No CPI" ablation: the same frequency-aware allocation, random unit prototypes (seeded)."""
    rows = allocate_prototypes(class_counts, cfg, class_names)
    logger.info("random prototype allocation (no CPI):\n%s", format_allocation_table(rows))
    generator = torch.Generator().manual_seed(int(cfg.seed))
    owners = torch.cat([torch.full((r.prototypes,), r.class_id, dtype=torch.int64) for r in rows])
    prototypes = {
        stage: F.normalize(torch.randn(owners.numel(), int(ch), generator=generator), dim=1)
        for stage, ch in stage_channels.items()
    }
    return PrototypeBank(
        tuple(stage_channels.keys()),
        prototypes,
        {s: owners.clone() for s in stage_channels},
        tuple(rows),
        len(rows),
        {"source": "random", "cpi_config": asdict(cfg)},
    )
