"""Backbone patch tokens for CPI: extraction, Parquet shards, reading back.

CPI clusters the patch tokens of the training images "from the backbone as it stands before
training" (spec). Tokens of every image and stage would not fit in memory for real data
(layer3 alone at 224 px is 196 x 1024 values per image), so each image keeps at most
``tokens_per_image`` tokens per stage (a seeded random subset), L2-normalised and stored as
float16. Shards are written atomically and named by index, so a killed extraction resumes
at the first missing shard.

Parquet layout (one row per image and stage): ``image_id: string``, ``stage: string``,
``labels: list<int16>``, ``tokens: fixed_size_list<halffloat>[n * C]``, ``num_tokens: int32``,
``dim: int32``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from mccl_core.models import CPIConfig, PrototypeBank, PrototypeBankBuilder

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


def _stage_names(backbone: nn.Module) -> list[str]:
    return list(getattr(backbone, "stage_names"))


@torch.no_grad()
def iter_stage_tokens(
    backbone: nn.Module,
    dataset: Dataset,
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
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    for batch in bar:
        indices = batch["index"].numpy()
        generator = torch.Generator().manual_seed(cfg.seed * 7919 + int(indices[0]))
        with autocast:
            maps = backbone.forward_features(batch["image"].to(device, non_blocking=True))
        yield indices, [_subsample_tokens(m, cfg.tokens_per_image, generator).cpu().numpy() for m in maps]


def run_cpi(
    backbone: nn.Module,
    dataset: Dataset,
    cpi_cfg: CPIConfig,
    extract_cfg: ExtractConfig,
    device: torch.device,
) -> PrototypeBank:
    """CPI straight from the backbone, without Parquet shards (small datasets, tests, notebooks)."""
    builder = PrototypeBankBuilder(
        dataset.num_classes, _stage_names(backbone), cpi_cfg, dataset.class_names  # type: ignore[attr-defined]
    )
    labels = torch.from_numpy(dataset.label_matrix())  # type: ignore[attr-defined]
    stop = len(dataset) if not extract_cfg.max_images else min(extract_cfg.max_images, len(dataset))
    for indices, stage_tokens in iter_stage_tokens(backbone, dataset, extract_cfg, device, 0, stop):
        builder.add([torch.from_numpy(t) for t in stage_tokens], labels[indices], torch.from_numpy(indices))
    return builder.build(device=device)


# ----------------------------------------------------------------------------- Parquet shards


def _shard_path(out_dir: Path, shard: int) -> Path:
    return out_dir / f"tokens-{shard:05d}.parquet"


def write_token_shards(
    backbone: nn.Module,
    dataset: Dataset,
    out_dir: Path,
    cfg: ExtractConfig,
    device: torch.device,
) -> dict:
    """Write shards ``tokens-00000.parquet``...; finished shards are kept (resume)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    n_images = len(dataset) if not cfg.max_images else min(cfg.max_images, len(dataset))
    n_shards = max(1, -(-n_images // cfg.shard_size))
    stages = _stage_names(backbone)
    image_ids = [r.image_id for r in dataset.records]  # type: ignore[attr-defined]
    labels = dataset.label_matrix()  # type: ignore[attr-defined]
    skipped = 0
    for shard in tqdm(range(n_shards), desc="token shards"):
        path = _shard_path(out_dir, shard)
        if path.is_file():
            skipped += 1
            continue
        start, stop = shard * cfg.shard_size, min((shard + 1) * cfg.shard_size, n_images)
        columns: dict[str, list] = {"image_id": [], "stage": [], "labels": [], "tokens": [], "num_tokens": [], "dim": []}
        for indices, stage_tokens in iter_stage_tokens(backbone, dataset, cfg, device, start, stop, progress=False):
            for s, tokens in enumerate(stage_tokens):
                for row, idx in enumerate(indices):
                    columns["image_id"].append(image_ids[idx])
                    columns["stage"].append(stages[s])
                    columns["labels"].append(np.flatnonzero(labels[idx]).astype(np.int16))
                    columns["tokens"].append(tokens[row].astype(np.float16).ravel())
                    columns["num_tokens"].append(tokens.shape[1])
                    columns["dim"].append(tokens.shape[2])
        _write_shard(path, columns)
    manifest = {
        "num_images": n_images,
        "num_shards": n_shards,
        "stages": stages,
        "stage_channels": list(getattr(backbone, "stage_channels")),
        "class_names": list(dataset.class_names),  # type: ignore[attr-defined]
        "config": asdict(cfg),
        "shards_reused": skipped,
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    log.info("features: %d images in %d shards (%d reused) -> %s", n_images, n_shards, skipped, out_dir)
    return manifest


def _write_shard(path: Path, columns: dict[str, list]) -> None:
    # One fixed-size list type per stage would be tighter; rows of several stages differ in
    # length, so tokens use a variable list whose rows carry num_tokens x dim values.
    table = pa.table(
        {
            "image_id": pa.array(columns["image_id"], pa.string()),
            "stage": pa.array(columns["stage"], pa.string()),
            "labels": pa.array(columns["labels"], pa.list_(pa.int16())),
            "tokens": pa.array(columns["tokens"], pa.list_(pa.float16())),
            "num_tokens": pa.array(columns["num_tokens"], pa.int32()),
            "dim": pa.array(columns["dim"], pa.int32()),
        }
    )
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def read_features_manifest(features_dir: Path) -> dict:
    manifest_path = features_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} is missing: run the extract step first")
    return json.loads(manifest_path.read_text())


def iter_token_shards(features_dir: Path) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], torch.Tensor]]:
    """Yield ``(image_positions [B], {stage: tokens [B, n, C] float32}, labels [B, num_classes])``
    shard by shard, so CPI streams over datasets larger than memory."""
    manifest = read_features_manifest(features_dir)
    num_classes = len(manifest["class_names"])
    position = 0
    for shard in range(manifest["num_shards"]):
        path = _shard_path(features_dir, shard)
        if not path.is_file():
            raise FileNotFoundError(f"feature shard {path} is missing ({manifest['num_shards']} expected)")
        table = pq.read_table(path)
        ids = table.column("image_id").to_pylist()
        stages = table.column("stage").to_pylist()
        labels = table.column("labels").to_pylist()
        num_tokens = table.column("num_tokens").to_numpy()
        dims = table.column("dim").to_numpy()
        flat = table.column("tokens").combine_chunks()
        values = flat.values.to_numpy(zero_copy_only=False)
        offsets = flat.offsets.to_numpy()
        order: dict[str, int] = {}
        label_rows: list[np.ndarray] = []
        per_stage: dict[str, list[np.ndarray]] = {s: [] for s in manifest["stages"]}
        for row, (image_id, stage) in enumerate(zip(ids, stages)):
            if image_id not in order:
                order[image_id] = len(order)
                multi_hot = np.zeros(num_classes, dtype=np.float32)
                multi_hot[list(labels[row])] = 1.0
                label_rows.append(multi_hot)
            tokens = values[offsets[row] : offsets[row + 1]].reshape(num_tokens[row], dims[row])
            per_stage[stage].append(tokens.astype(np.float32))
        positions = np.arange(position, position + len(order))
        position += len(order)
        yield (
            positions,
            {s: torch.from_numpy(np.stack(per_stage[s])) for s in manifest["stages"]},
            torch.from_numpy(np.stack(label_rows)),
        )


def cluster_token_shards(features_dir: Path, cpi_cfg: CPIConfig, device: torch.device | None = None) -> PrototypeBank:
    """CPI over the extract step's shards (streamed; the builder keeps a bounded patch sample)."""
    manifest = read_features_manifest(features_dir)
    builder = PrototypeBankBuilder(len(manifest["class_names"]), manifest["stages"], cpi_cfg, manifest["class_names"])
    for positions, stage_tokens, labels in tqdm(iter_token_shards(features_dir), total=manifest["num_shards"], desc="CPI shards"):
        builder.add(stage_tokens, labels, torch.from_numpy(positions))
    return builder.build(device=device)
