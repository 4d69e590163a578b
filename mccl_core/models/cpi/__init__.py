"""CPI: class-specific prototype initialisation.

* :mod:`.allocation` - how many prototypes each class owns (frequency-aware K_c);
* :mod:`.bank` - the ``PrototypeBank`` artifact and its file format;
* :mod:`.builder` - the streaming builder (deterministic per-class patch subsample + spherical k-means).

Patch tokens of a *dataset* (Parquet shards, CPI over a dataset) are one floor up, in
:mod:`mccl_core.training.token_shards`: models do not read datasets or files of other steps.
"""

from .allocation import AllocationRow, PrototypeBankError, allocate_prototypes, format_allocation_table
from .bank import PrototypeBank, random_prototype_bank
from .builder import PrototypeBankBuilder, build_prototype_bank

__all__ = [
    "AllocationRow",
    "PrototypeBank",
    "PrototypeBankBuilder",
    "PrototypeBankError",
    "allocate_prototypes",
    "build_prototype_bank",
    "format_allocation_table",
    "random_prototype_bank",
]
