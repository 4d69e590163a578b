"""Official Intentonomy class subsets (Jia et al., CVPR 2021).

The Intentonomy paper reports macro-F1 not only over all 28 intents but also over two
groupings of them:

* by difficulty: ``easy`` / ``medium`` / ``hard`` (a partition of the 28 classes), and
* by how much the intent depends on visible content: ``object`` (mostly object-dependent),
  ``context`` (mostly context-dependent) and ``other`` (everything else).

Class indices refer to the official ``categories`` ids 0..27 (alphabetical intent names,
``0 = Attractive`` ... ``27 = WorkILike``). The subsets live in the metrics package (not in
``mccl_core.data``) so that data code may import them without creating an import cycle.
"""

from __future__ import annotations

INTENTONOMY_NUM_CLASSES: int = 28

_EASY: tuple[int, ...] = (0, 7, 19)
_MEDIUM: tuple[int, ...] = (1, 3, 4, 6, 9, 10, 11, 12, 13, 14, 15, 16, 18, 22, 26)
_HARD: tuple[int, ...] = (2, 5, 8, 17, 20, 21, 23, 24, 25, 27)
_OBJECT: tuple[int, ...] = (0, 3, 10, 11, 12, 16, 23)
_CONTEXT: tuple[int, ...] = (7, 8)
# "other" is defined by the paper as every class that is neither object- nor context-dependent.
_OTHER: tuple[int, ...] = tuple(
    c for c in range(INTENTONOMY_NUM_CLASSES) if c not in set(_OBJECT) | set(_CONTEXT)
)

INTENTONOMY_SUBSETS: dict[str, tuple[int, ...]] = {
    "easy": _EASY,
    "medium": _MEDIUM,
    "hard": _HARD,
    "object": _OBJECT,
    "context": _CONTEXT,
    "other": _OTHER,
}
