"""What a trained model depends on, as one value: the train step's resume guard and the
experiment model cache both key on :func:`training_fingerprint`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mccl_core.hashing import sha256_files

#: Train fields that change where or how fast a run goes, not what it learns (out of fingerprints).
RUN_ONLY_FIELDS = ("output_dir", "resume", "num_workers", "device", "eval_every")


def training_code_hash() -> str:
    """Hash of the code that defines what a trained model means (model, loop, data pipeline).

    DVC re-runs the train stage when this code changes; the checkpoint of the old code must then
    not be resumed (it could even be a finished run, and the "new" model would be the old one),
    and an experiment must not reuse a cached model of the old code.
    """
    import mccl_core.data
    import mccl_core.models
    import mccl_core.training

    files = [p for package in (mccl_core.models, mccl_core.training, mccl_core.data)
             for p in sorted(Path(list(package.__path__)[0]).rglob("*.py"))]  # fmt: skip
    return sha256_files(files)


def training_fingerprint(model_cfg: Any, train_cfg: Any, data_hash: str, **extra: Any) -> dict[str, Any]:
    """What a trained model depends on: the model and train configs (run-only fields left out),
    the data's contents (the validate step's data hash), the training code and ``extra`` (the
    train step: its input files and world size; experiments: data/extract configs)."""
    train = {k: v for k, v in train_cfg.to_dict().items() if k not in RUN_ONLY_FIELDS}
    return {"model": model_cfg.to_dict(), "train": train, "data": data_hash, "code": training_code_hash(), **extra}
