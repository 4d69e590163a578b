"""Thin command-line wrappers, one per pipeline step, over :mod:`mccl_core.steps`.

``mccl step <name> [args]`` (or ``python -m components <name>``) runs one step; ``dvc.yaml``
calls exactly these commands. Every wrapper only parses arguments, reads its params sections and
calls the step's library function; each also runs alone as ``python -m components.<name>``.
"""

STEPS: tuple[str, ...] = ("demo", "validate", "extract", "cluster", "train", "evaluate", "register")
