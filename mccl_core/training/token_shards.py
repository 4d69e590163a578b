"""Backbone patch tokens for CPI: extraction, Parquet shards, reading back.

CPI clusters the patch tokens of the training images "from the backbone as it stands before
training" (docs/model.md). Tokens of every image and stage would not fit in memory for real data
(layer3 alone at 224 px is 196 x 1024 values per image), so each image keeps at most
``tokens_per_image`` tokens per stage (a seeded random subset), L2-normalised and stored as
float16. Shards are written atomically and named by index, so a killed extraction resumes
at the first missing shard.

Parquet layout: one file per shard and stage (``tokens-<shard>-<stage>.parquet``), one row per
image: ``image_id: string``, ``stage: string``, ``labels: list<int16>``,
``tokens: fixed_size_list<halffloat>[n * C]`` (every row of a stage file has the same ``n`` tokens
of ``C`` channels, hence a fixed-size list), ``num_tokens: int32``, ``dim: int32``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from mccl_core.models import Backbone, CPIConfig, PrototypeBank, PrototypeBankBuilder

if TYPE_CHECKING:
    from mccl_core.data.dataset import IntentDataset

log = logging.getLogger(__name__)

MANIFEST_NAME = "features.json"


@dataclass(frozen=True)
class ExtractConfig:
    batch_size: int = 32
    #: Tokens kept per image and stage (0 keeps all).
    tokens_per_image: int = 64
    #: Images per Parquet shard.
    shard_size: int = 512
    #: Use at most this many training images (0: all).
    max_images: int = 0
    seed: int = 0
    num_workers: int = 0


def _subsample_tokens(feature_map: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    """[B, C, H, W] -> L2-normalised [B, n, C] with n = min(keep, H * W) seeded random positions."""
    tokens = feature_map.flatten(2).transpose(1, 2).float()  # [B, HW, C]
    tokens = nn.functional.normalize(tokens, dim=-1)
    hw = tokens.shape[1]
    if keep and keep < hw:
        picks = torch.stack([torch.randperm(hw, generator=generator)[:keep] for _ in range(tokens.shape[0])])
        tokens = torch.gather(tokens, 1, picks.to(tokens.device).unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return tokens


def _stage_names(backbone: Backbone) -> list[str]:
    return list(backbone.stage_names)


@torch.no_grad()
def iter_stage_tokens(
    backbone: Backbone,
    dataset: IntentDataset,
    cfg: ExtractConfig,
    device: torch.device,
    start_image: int = 0,
    stop_image: int | None = None,
    progress: bool = True,
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Yield ``(dataset_indices [B], per-stage tokens [B, n, C] float32)`` batch by batch.

    The token subset of an image depends only on (seed, image index), so a resumed shard equals
    the one an uninterrupted run would have written.
    """
    backbone.eval().to(device)
    stop_image = len(dataset) if stop_image is None else stop_image
    subset = Subset(dataset, range(start_image, stop_image))
    loader = DataLoader(subset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    bar = tqdm(loader, desc=f"extract [{start_image}:{stop_image}]", leave=False, disable=not progress)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    for batch in bar:
        indices = batch["index"].numpy()
        generator = torch.Generator().manual_seed(cfg.seed * 7919 + int(indices[0]))
        with autocast:
            maps = backbone.forward_features(batch["image"].to(device, non_blocking=True))
        yield indices, [_subsample_tokens(m, cfg.tokens_per_image, generator).cpu().numpy() for m in maps]


def run_cpi(
    backbone: Backbone,
    dataset: IntentDataset,
    cpi_cfg: CPIConfig,
    extract_cfg: ExtractConfig,
    device: torch.device,
) -> PrototypeBank:
    """CPI straight from the backbone, without Parquet shards (small datasets, tests, notebooks,
    ``mccl experiment``, ``bench/ablations.py``).

    The tokens take the shards' float16 rounding on the way, so this bank equals the extract ->
    cluster steps' bank bit for bit. It matters: MCCL's training amplifies tiny differences in the
    initial prototypes (a <= 3e-5 difference, float16 rounding alone, moved the demo's seed 0 from
    test macro-F1 0.945 through the experiment runner to 0.744 through ``dvc repro``).
    """
    builder = PrototypeBankBuilder(dataset.num_classes, _stage_names(backbone), cpi_cfg, dataset.class_names)
    labels = torch.from_numpy(dataset.label_matrix())
    stop = len(dataset) if not extract_cfg.max_images else min(extract_cfg.max_images, len(dataset))
    for indices, stage_tokens in iter_stage_tokens(backbone, dataset, extract_cfg, device, 0, stop):
        as_stored = [torch.from_numpy(t.astype(np.float16).astype(np.float32)) for t in stage_tokens]
        builder.add(as_stored, labels[indices], torch.from_numpy(indices))
    return builder.build(device=device)


# ----------------------------------------------------------------------------- Parquet shards

PROGRESS_NAME = "shards.json"


def _shard_path(out_dir: Path, shard: int, stage: str) -> Path:
    return out_dir / f"tokens-{shard:05d}-{stage}.parquet"


def _shard_done(out_dir: Path, shard: int, stages: list[str]) -> bool:
    return all(_shard_path(out_dir, shard, stage).is_file() for stage in stages)


def _prepare_out_dir(out_dir: Path, fingerprint: dict) -> None:
    """Keep finished shards only if they were written for the same inputs (resume), else clear them.

    Without this, a re-run with another ``tokens_per_image`` or backbone would silently mix old
    and new shards.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = out_dir / PROGRESS_NAME
    if progress.is_file() and json.loads(progress.read_text()) == fingerprint:
        return
    stale = sorted(out_dir.glob("tokens-*.parquet"))
    if stale:
        log.warning("features: %d shards in %s were written for other inputs; rewriting them", len(stale), out_dir)
        for path in stale:
            path.unlink()
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    tmp = progress.with_name(progress.name + ".tmp")
    tmp.write_text(json.dumps(fingerprint, indent=2))
    os.replace(tmp, progress)


def write_token_shards(
    backbone: Backbone,
    dataset: IntentDataset,
    out_dir: Path,
    cfg: ExtractConfig,
    device: torch.device,
    inputs_fingerprint: str = "",
) -> dict:
    """Write ``tokens-<shard>-<stage>.parquet`` files; finished shards are kept (resume).

    ``inputs_fingerprint``: identifies the backbone weights and transform (e.g. a hash of the
    backbone config, seed and image size); shards written for another fingerprint, config or
    image list are discarded instead of reused.
    """
    out_dir = Path(out_dir)
    n_images = len(dataset) if not cfg.max_images else min(cfg.max_images, len(dataset))
    n_shards = max(1, -(-n_images // cfg.shard_size))
    stages = _stage_names(backbone)
    image_ids = [r.image_id for r in dataset.records]
    labels = dataset.label_matrix()
    ids_digest = hashlib.sha256("\n".join(image_ids[:n_images]).encode()).hexdigest()
    _prepare_out_dir(
        out_dir,
        {"config": asdict(cfg), "stages": stages, "image_ids_sha256": ids_digest, "inputs": inputs_fingerprint},
    )
    skipped = 0
    for shard in tqdm(range(n_shards), desc="token shards"):
        if _shard_done(out_dir, shard, stages):
            skipped += 1
            continue
        start, stop = shard * cfg.shard_size, min((shard + 1) * cfg.shard_size, n_images)
        per_stage: dict[str, list[np.ndarray]] = {stage: [] for stage in stages}
        indices_seen: list[np.ndarray] = []
        for indices, stage_tokens in iter_stage_tokens(backbone, dataset, cfg, device, start, stop, progress=False):
            indices_seen.append(indices)
            for stage, tokens in zip(stages, stage_tokens):
                per_stage[stage].append(tokens.astype(np.float16))
        indices = np.concatenate(indices_seen)
        for stage in stages:
            tokens = np.concatenate(per_stage[stage])  # [B, n, C]
            _write_shard(
                _shard_path(out_dir, shard, stage),
                stage,
                [image_ids[i] for i in indices],
                [np.flatnonzero(labels[i]).astype(np.int16) for i in indices],
                tokens,
            )
    manifest = {
        "num_images": n_images,
        "num_shards": n_shards,
        "stages": stages,
        "stage_channels": list(backbone.stage_channels),
        "class_names": list(dataset.class_names),
        "config": asdict(cfg),
        "inputs": inputs_fingerprint,
    }
    # The file holds what the shards are, never how this run got them: a resumed extract must
    # write the bytes a fresh one writes (DVC hashes the folder; a clean clone's repro compares).
    tmp = out_dir / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, out_dir / MANIFEST_NAME)
    log.info("features: %d images in %d shards (%d reused) -> %s", n_images, n_shards, skipped, out_dir)
    return {**manifest, "shards_reused": skipped}


def _write_shard(path: Path, stage: str, image_ids: list[str], labels: list[np.ndarray], tokens: np.ndarray) -> None:
    """One stage of one shard: every row holds the same number of tokens, hence a fixed-size list."""
    batch, num_tokens, dim = tokens.shape
    flat = pa.array(tokens.reshape(-1), pa.float16())
    table = pa.table(
        {
            "image_id": pa.array(image_ids, pa.string()),
            "stage": pa.array([stage] * batch, pa.string()),
            "labels": pa.array(labels, pa.list_(pa.int16())),
            "tokens": pa.FixedSizeListArray.from_arrays(flat, num_tokens * dim),
            "num_tokens": pa.array(np.full(batch, num_tokens, dtype=np.int32)),
            "dim": pa.array(np.full(batch, dim, dtype=np.int32)),
        }
    )
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def read_features_manifest(features_dir: Path) -> dict:
    manifest_path = Path(features_dir) / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} is missing: run the extract step first")
    return json.loads(manifest_path.read_text())


def iter_token_shards(features_dir: Path) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], torch.Tensor]]:
    """Yield ``(image_positions [B], {stage: tokens [B, n, C] float32}, labels [B, num_classes])``
    shard by shard, so CPI streams over datasets larger than memory."""
    features_dir = Path(features_dir)
    manifest = read_features_manifest(features_dir)
    num_classes = len(manifest["class_names"])
    position = 0
    for shard in range(manifest["num_shards"]):
        per_stage: dict[str, torch.Tensor] = {}
        ids: list[str] | None = None
        label_rows: list[np.ndarray] = []
        for stage in manifest["stages"]:
            path = _shard_path(features_dir, shard, stage)
            if not path.is_file():
                raise FileNotFoundError(f"feature shard {path} is missing ({manifest['num_shards']} shards expected)")
            table = pq.read_table(path)
            stage_ids = table.column("image_id").to_pylist()
            if ids is None:
                ids = stage_ids
                for row_labels in table.column("labels").to_pylist():
                    multi_hot = np.zeros(num_classes, dtype=np.float32)
                    multi_hot[list(row_labels)] = 1.0
                    label_rows.append(multi_hot)
            elif stage_ids != ids:
                raise ValueError(f"feature shard {path} lists other images than the shard's first stage")
            num_tokens = int(table.column("num_tokens")[0].as_py())
            dim = int(table.column("dim")[0].as_py())
            column = table.column("tokens").combine_chunks()
            values = column.flatten().to_numpy(zero_copy_only=False)
            per_stage[stage] = torch.from_numpy(values.reshape(len(stage_ids), num_tokens, dim).astype(np.float32))
        assert ids is not None
        positions = np.arange(position, position + len(ids))
        position += len(ids)
        yield positions, per_stage, torch.from_numpy(np.stack(label_rows))


def cluster_token_shards(features_dir: Path, cpi_cfg: CPIConfig, device: torch.device | None = None) -> PrototypeBank:
    """CPI over the extract step's shards (streamed; the builder keeps a bounded patch sample)."""
    manifest = read_features_manifest(features_dir)
    builder = PrototypeBankBuilder(len(manifest["class_names"]), manifest["stages"], cpi_cfg, manifest["class_names"])
    for positions, stage_tokens, labels in tqdm(
        iter_token_shards(features_dir), total=manifest["num_shards"], desc="CPI shards"
    ):
        builder.add(stage_tokens, labels, torch.from_numpy(positions))
    return builder.build(device=device)
