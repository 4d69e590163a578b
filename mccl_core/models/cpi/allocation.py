"""CPI's frequency-aware allocation: how many prototypes each class owns (K_c).

K_c = clip(round(K_total * n_c^-a / sum_j n_j^-a), k_min, k_max),  K_total = 8 * num_classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..config import CPIConfig


class PrototypeBankError(ValueError):
    """A prototype bank file or its inputs are invalid (message names the file/class/stage)."""


@dataclass(frozen=True)
class AllocationRow:
    """One row of the frequency-aware allocation table."""

    class_id: int
    class_name: str
    count: int
    prototypes: int


def allocate_prototypes(
    class_counts: Sequence[int] | np.ndarray,
    cfg: CPIConfig,
    class_names: Sequence[str] | None = None,
) -> list[AllocationRow]:
    """Frequency-aware number of prototypes per class (rare classes get more).

    Raises :class:`PrototypeBankError` for a class with no training image: its share would be
    infinite and CPI has no patches to cluster for it.
    """
    counts = np.asarray(class_counts, dtype=np.float64).reshape(-1)
    num_classes = counts.shape[0]
    names = _class_names(class_names, num_classes)
    if num_classes == 0:
        raise PrototypeBankError("allocate_prototypes: no classes")
    zero = [f"{i} ({names[i]})" for i in np.flatnonzero(counts <= 0)]
    if zero:
        raise PrototypeBankError(f"classes without training images cannot get prototypes: {', '.join(zero)}")
    weights = counts ** (-cfg.exponent)
    k_total = cfg.prototypes_per_class * num_classes
    raw = k_total * weights / weights.sum()
    k = np.clip(np.round(raw), cfg.k_min, cfg.k_max).astype(int)
    return [
        AllocationRow(class_id=i, class_name=names[i], count=int(counts[i]), prototypes=int(k[i]))
        for i in range(num_classes)
    ]


def format_allocation_table(rows: Sequence[AllocationRow]) -> str:
    """Human-readable allocation table (class, n_c, K_c) for logs and reports."""
    width = max([len("class")] + [len(r.class_name) for r in rows])
    lines = [f"{'id':>3}  {'class':<{width}}  {'n_c':>7}  {'K_c':>4}"]
    lines += [f"{r.class_id:>3}  {r.class_name:<{width}}  {r.count:>7}  {r.prototypes:>4}" for r in rows]
    lines.append(f"total prototypes: {sum(r.prototypes for r in rows)}")
    return "\n".join(lines)


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [f"class_{i}" for i in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise PrototypeBankError(f"{len(names)} class names for {num_classes} classes")
    return names
