"""Official Intentonomy class subsets (Jia et al., CVPR 2021) and the one rule for when they apply.

The Intentonomy paper reports macro-F1 not only over all 28 intents but also over two
groupings of them:

* by difficulty: ``easy`` / ``medium`` / ``hard`` (a partition of the 28 classes), and
* by how much the intent depends on visible content: ``object`` (mostly object-dependent),
  ``context`` (mostly context-dependent) and ``other`` (everything else).

Class indices refer to the official ``categories`` ids 0..27 (alphabetical intent names,
``0 = Attractive`` ... ``27 = WorkILike``). The subsets live in the metrics package (not in
``mccl_core.data``) so that data code may import them without creating an import cycle.

When they apply: :func:`intentonomy_subsets_for` - by class NAMES, never by class count: a
28-class dataset with other classes must not be scored on Intentonomy's subsets. The evaluate
step and ``mccl score --subsets auto|intentonomy`` (:func:`resolve_subsets`) both use it.
"""

from __future__ import annotations

from collections.abc import Sequence

from mccl_core.data.intentonomy_json import INTENTONOMY_CLASSES

INTENTONOMY_NUM_CLASSES: int = len(INTENTONOMY_CLASSES)

_EASY: tuple[int, ...] = (0, 7, 19)
_MEDIUM: tuple[int, ...] = (1, 3, 4, 6, 9, 10, 11, 12, 13, 14, 15, 16, 18, 22, 26)
_HARD: tuple[int, ...] = (2, 5, 8, 17, 20, 21, 23, 24, 25, 27)
_OBJECT: tuple[int, ...] = (0, 3, 10, 11, 12, 16, 23)
_CONTEXT: tuple[int, ...] = (7, 8)
# "other" is defined by the paper as every class that is neither object- nor context-dependent.
_OTHER: tuple[int, ...] = tuple(c for c in range(INTENTONOMY_NUM_CLASSES) if c not in set(_OBJECT) | set(_CONTEXT))

INTENTONOMY_SUBSETS: dict[str, tuple[int, ...]] = {
    "easy": _EASY,
    "medium": _MEDIUM,
    "hard": _HARD,
    "object": _OBJECT,
    "context": _CONTEXT,
    "other": _OTHER,
}

#: Choices of ``mccl score --subsets``.
SUBSET_CHOICES: tuple[str, ...] = ("auto", "intentonomy", "none")


def intentonomy_subsets_for(class_names: Sequence[str]) -> dict[str, tuple[int, ...]] | None:
    """The official subsets when ``class_names`` are exactly the 28 Intentonomy classes in id
    order, else ``None`` (the one rule; a fresh dict each call)."""
    if tuple(class_names) != INTENTONOMY_CLASSES:
        return None
    return dict(INTENTONOMY_SUBSETS)


def resolve_subsets(choice: str, class_names: Sequence[str]) -> dict[str, tuple[int, ...]] | None:
    """Subsets for a ``--subsets`` choice: ``auto`` = :func:`intentonomy_subsets_for`;
    ``intentonomy`` = the same rule, but an error when it does not apply; ``none`` = no subsets."""
    if choice == "none":
        return None
    if choice not in SUBSET_CHOICES:
        raise ValueError(f"subsets must be one of {list(SUBSET_CHOICES)}, got {choice!r}")
    subsets = intentonomy_subsets_for(class_names)
    if subsets is None and choice == "intentonomy":
        names = list(class_names)
        shown = names if len(names) <= 6 else [*names[:6], "..."]
        raise ValueError(
            f"Intentonomy subsets need the {INTENTONOMY_NUM_CLASSES} Intentonomy classes in id order "
            f"({INTENTONOMY_CLASSES[0]} ... {INTENTONOMY_CLASSES[-1]}); the annotations have "
            f"{len(names)} classes: {shown}"
        )
    return subsets
