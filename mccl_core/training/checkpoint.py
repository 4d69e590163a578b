"""Epoch checkpoints that make a killed run resumable to the same result.

A checkpoint holds everything that influences the next epoch: model (with MCC prototype buffers),
EMA, optimiser, scheduler, every RNG state and the history so far.

Format (``FORMAT_VERSION`` 2): one ``torch.save`` file that ``torch.load(..., weights_only=True)``
reads - only tensors and plain containers (dict, list, str, int, float, bool, None). State that is
not a tensor is stored in such a form: the numpy RNG key as an int64 tensor, Python's RNG state
as a list of ints, configs and history as JSON-compatible dicts. So loading never unpickles
arbitrary objects: a file crafted to run code on load is refused (:class:`UnsafeCheckpointError`).

Two files per run, ``last.pt`` and ``prev.pt`` (the epoch before), each written to a temporary
name, fsynced and renamed, so a crash mid-write never leaves a truncated file under either name.
If ``last.pt`` still turns out unreadable (disk full, copied half-way, bit rot), resuming falls
back to ``prev.pt`` instead of failing identically on every re-run.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
LAST_NAME = "last.pt"
PREVIOUS_NAME = "prev.pt"
REQUIRED_KEYS = ("format", "epoch", "model", "optimizer", "scheduler", "ema", "rng", "history")
RESTART_HINT = (
    "to train from scratch instead, run with --restart (params: train.resume: false), which moves the checkpoints aside"
)

#: How ``mccl train`` starts the one line it prints for an error a person must resolve (a busy
#: output folder, a checkpoint it refuses or cannot read); the train step quotes that line.
TRAINER_ERROR_PREFIX = "mccl train: "


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or not a checkpoint of this format."""


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds objects that only a full unpickle could build - refused, never loaded.

    Deliberately not a :class:`CheckpointError`: resuming does not silently fall back past a file
    that may have been tampered with; a person should look at it.
    """


def capture_rng_state() -> dict[str, Any]:
    """Every RNG state as tensors / plain lists (loadable with ``weights_only=True``)."""
    version, internal, gauss_next = random.getstate()
    # legacy=True: the MT19937 tuple (name, keys, pos, has_gauss, cached_gaussian).
    name, keys, pos, has_gauss, cached_gaussian = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    state: dict[str, Any] = {
        "python": [int(version), [int(x) for x in internal], gauss_next],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # uint32 values, lossless
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def previous_path(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept (``last.pt`` -> ``prev.pt``)."""
    return path.with_name(PREVIOUS_NAME if path.name == LAST_NAME else f"{path.stem}.prev{path.suffix}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a filesystem that cannot open directories: the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_copy(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source`` in one rename (a hard link where possible: no I/O)."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    # Already the same file (last.pt restored from prev.pt by a hard link): rename(2) of two links
    # to one inode does nothing and would leave ``tmp`` behind, so there is nothing to do.
    if target.exists() and os.path.samefile(source, target):
        return
    try:
        os.link(source, tmp)
    except OSError:  # no hard links on this filesystem
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _plain(value: Any) -> Any:
    """JSON round trip: configs and history hold only types ``weights_only`` loading accepts."""
    return json.loads(json.dumps(value))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically; the file it replaces becomes :func:`previous_path`.

    Order: new data to ``path.tmp`` (fsynced) -> current ``path`` linked to ``prev`` -> ``path.tmp``
    renamed over ``path``. ``path`` exists at every instant once written; a crash leaves the epochs
    (prev, last) at (N-2, N-1), (N-1, N-1) or (N-1, N) - never a partial file under either name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(payload)
    payload["format"] = FORMAT_VERSION
    for key in ("history", "train_config", "model_config"):
        if key in payload:
            payload[key] = _plain(payload[key])
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if path.is_file():
        _atomic_copy(path, previous_path(path))
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    log.info("checkpoint written: %s (after epoch %s)", path, epochs_done(payload))


def epochs_done(state: dict[str, Any]) -> str:
    """``"2/8"``: a checkpoint's finished epochs, 1-based like the epoch lines, for every log line
    that names one (written, fallen back to, resumed from) - so they agree."""
    epochs = (state.get("train_config") or {}).get("epochs")
    return f"{int(state['epoch']) + 1}/{epochs}" if epochs else str(int(state["epoch"]) + 1)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Raises :class:`CheckpointError` (missing, truncated, not this format) or
    :class:`UnsafeCheckpointError` (holds arbitrary Python objects); both name the file.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
        # torch's message is long (and suggests allow-listing); the rejected global says what was found.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        detail = f"it needs the Python global {found.group(1)}" if found else "not tensors and plain containers"
        raise UnsafeCheckpointError(
            f"refusing to load checkpoint {path}: it holds Python objects that only a full unpickle "
            f"could build ({detail}), and unpickling can run code. "
            f"This training loop never writes such files (an older mccl version, or tampered with), and "
            f"re-running resumes from the same file: inspect it and move it out of {path.parent}, or "
            f"{RESTART_HINT}."
        ) from exc
    except Exception as exc:  # truncated zip, empty file, I/O error: say which file
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupt?): {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        kind = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not an mccl training checkpoint of format {FORMAT_VERSION} (found {kind})")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}")
    return state


def _aside(path: Path, tag: str) -> Path:
    """Rename ``path`` to ``<name>.<tag>-<UTC time>`` (never overwriting), returning the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
    os.replace(path, target)
    return target


def set_aside_stale(path: Path) -> Path:
    """Rename ``path`` (``last.pt``) to ``last.stale.pt``, or ``last.2.stale.pt``, ``last.3.stale.pt``...
    when that is taken: a second foreign run set aside never overwrites the first (both may be
    someone's only copy of a training). The name always ends in ``.stale.pt``."""
    target = path.with_name(f"{path.stem}.stale{path.suffix}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.stem}.{n}.stale{path.suffix}")
    os.replace(path, target)
    if n > 1:
        log.warning("moved checkpoint %s to %s (the earlier %s kept)", path, target, path.stem + ".stale.pt")
    else:
        log.warning("moved checkpoint %s to %s", path, target)
    return target


def discard_checkpoints(last: Path, reason: str) -> list[Path]:
    """Move ``last`` and its previous checkpoint aside (``*.discarded-<time>``); never deletes."""
    moved = []
    for path in (last, previous_path(last)):
        if path.is_file():
            target = _aside(path, "discarded")
            log.warning("%s: moved checkpoint %s to %s", reason, path, target)
            moved.append(target)
    return moved


def load_latest(last: Path, repair: bool = True) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint as ``(state, file)``; ``None`` when ``last`` does not exist.

    An unreadable ``last`` falls back to :func:`previous_path` with a warning. With ``repair``
    (one process only, under DDP rank 0) the bad file is moved aside (``*.corrupt-<time>``) and
    ``prev`` copied to ``last``, so the next save rotates a good file into ``prev``. Both unreadable:
    :class:`CheckpointError` naming both files and how to restart. :class:`UnsafeCheckpointError`
    is never fallen back from.
    """
    if not last.is_file():
        return None
    try:
        return load_checkpoint(last), last
    except CheckpointError as last_error:
        prev = previous_path(last)
        if not prev.is_file():
            raise CheckpointError(
                f"cannot resume: {last_error}; there is no previous checkpoint {prev} to fall back to. "
                f"{RESTART_HINT[0].upper()}{RESTART_HINT[1:]}."
            ) from last_error
        try:
            state = load_checkpoint(prev)
        except CheckpointError as prev_error:
            raise CheckpointError(
                f"cannot resume: both checkpoints are unreadable - {last_error}; {prev_error}. "
                f"{RESTART_HINT[0].upper()}{RESTART_HINT[1:]}."
            ) from prev_error
        log.warning(
            "checkpoint %s is unreadable (%s); resuming from the previous one, %s (after epoch %s)",
            last,
            last_error,
            prev,
            epochs_done(state),
        )
        if repair:
            bad = _aside(last, "corrupt")
            _atomic_copy(prev, last)
            log.warning("moved the unreadable %s to %s and restored it from %s", last, bad, prev)
        return state, prev
