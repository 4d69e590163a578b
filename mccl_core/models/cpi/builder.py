"""CPI's streaming builder: class-specific prototypes from batches of patch tokens.

For every class c and every token stage, the L2-normalised patch tokens of the training images
that carry c are clustered (spherical k-means, see :mod:`.kmeans`) into K_c prototypes owned by c.
K_c is frequency-aware: rare classes get more prototypes (our formula, docs/model.md):

    K_c = clip(round(K_total * n_c^-a / sum_j n_j^-a), k_min, k_max),  K_total = 8 * num_classes.

Patch tokens of a whole training set do not fit in memory at ResNet-101 resolution, so
:class:`PrototypeBankBuilder` streams batches and keeps, per class and stage, a deterministic
uniform subsample of at most ``max_patches_per_class`` patches: every patch gets a hash key of
(seed, stage, image index, patch index) and the smallest keys are kept. The subsample therefore
does not depend on batch boundaries or data-loader chunking, only on the seed and image indices.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..config import CPIConfig
from ..kmeans import spherical_kmeans
from .allocation import AllocationRow, PrototypeBankError, _class_names, allocate_prototypes, format_allocation_table
from .bank import PrototypeBank

logger = logging.getLogger(__name__)


class PrototypeBankBuilder:
    """Streams backbone features of training images and runs CPI on a bounded patch subsample.

    Usage (pipeline CPI step)::

        builder = PrototypeBankBuilder(num_classes, backbone.stage_names, cfg.cpi, class_names)
        with torch.no_grad():
            for batch in loader:
                builder.add(backbone.forward_features(batch["image"]), batch["labels"], batch["index"])
        bank = builder.build()

    ``add`` accepts feature maps ``[B, C_s, H, W]`` or tokens ``[B, N, C_s]`` per stage. An image
    carries class c when its label value for c is > 0 (soft labels included).
    """

    def __init__(
        self,
        num_classes: int,
        stage_names: Sequence[str],
        cfg: CPIConfig,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if num_classes < 1:
            raise PrototypeBankError("PrototypeBankBuilder: num_classes must be >= 1")
        self.num_classes = num_classes
        self.stage_names = tuple(stage_names)
        self.cfg = cfg
        self.class_names = _class_names(class_names, num_classes)
        self.class_counts = np.zeros(num_classes, dtype=np.int64)
        self.images_seen = 0
        self._seen_indices: set[int] = set()
        self._channels: dict[str, int] = {}
        # per stage, per class: list of (keys uint64 [n], tokens fp16 [n, C]) chunks
        self._pool: dict[str, list[list[tuple[np.ndarray, Tensor]]]] = {
            s: [[] for _ in range(num_classes)] for s in self.stage_names
        }
        self._pool_sizes: dict[str, list[int]] = {s: [0] * num_classes for s in self.stage_names}

    def add(
        self,
        stage_features: Sequence[Tensor] | Mapping[str, Tensor],
        labels: Tensor | np.ndarray,
        image_indices: Tensor | np.ndarray | Sequence[int] | None = None,
    ) -> None:
        """Add one batch of maps ``[B, C_s, H, W]`` or tokens ``[B, N, C_s]`` per stage.

        ``image_indices``: dataset indices (default: running count); they seed the deterministic
        subsample, so pass them when the loader shuffles.
        """
        features = self._as_stage_list(stage_features)
        labels_t = self._check_labels(labels)
        batch = labels_t.shape[0]
        if image_indices is None:
            indices = np.arange(self.images_seen, self.images_seen + batch, dtype=np.int64)
        else:
            indices = _as_index_array(image_indices)
        if indices.shape[0] != batch:
            raise PrototypeBankError(f"CPI: {indices.shape[0]} image indices for a batch of {batch}")
        carries = self._register_images(labels_t, indices)
        for stage_idx, (stage, feats) in enumerate(zip(self.stage_names, features)):
            tokens = _to_tokens(feats, stage)
            if tokens.shape[0] != batch:
                raise PrototypeBankError(f"CPI stage {stage!r}: {tokens.shape[0]} feature rows for {batch} labels")
            num_patches = tokens.shape[1]
            self._add_stage_tokens(
                stage_idx,
                tokens.reshape(batch * num_patches, tokens.shape[2]),
                np.repeat(indices, num_patches),
                np.tile(np.arange(num_patches, dtype=np.int64), batch),
                carries.repeat_interleave(num_patches, dim=0),
            )

    def add_tokens(
        self,
        stage_tokens: Mapping[str, tuple[Tensor | np.ndarray, Tensor | np.ndarray]],
        image_labels: Tensor | np.ndarray,
    ) -> None:
        """Add pre-extracted flat tokens: ``stage_tokens[stage] = (tokens [M, C_s], image_index [M])``
        where ``image_index`` indexes rows of ``image_labels [N, num_classes]`` (e.g. the output of
        the pipeline's feature-extraction step). Every image referenced by any stage is counted once.
        """
        labels_t = self._check_labels(image_labels)
        missing = [s for s in self.stage_names if s not in stage_tokens]
        if missing:
            raise PrototypeBankError(f"CPI: tokens for stage(s) {missing} missing")
        per_stage = []
        for stage in self.stage_names:
            tokens, image_index = stage_tokens[stage]
            tokens_t = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, Tensor) else tokens)
            index = _as_index_array(image_index)
            if tokens_t.ndim != 2 or tokens_t.shape[0] != index.shape[0]:
                raise PrototypeBankError(
                    f"CPI stage {stage!r}: expected tokens [M, C] with M image indices, got "
                    f"{tuple(tokens_t.shape)} and {index.shape[0]} indices"
                )
            if index.size and (index.min() < 0 or index.max() >= labels_t.shape[0]):
                raise PrototypeBankError(
                    f"CPI stage {stage!r}: image indices outside [0, {labels_t.shape[0]}) of the label matrix"
                )
            per_stage.append((tokens_t, index))
        images = np.unique(np.concatenate([index for _, index in per_stage]))
        self._register_images(labels_t[torch.from_numpy(images)], images)
        carries_all = labels_t > 0
        for stage_idx, (tokens_t, index) in enumerate(per_stage):
            order = np.argsort(index, kind="stable")
            sorted_index = index[order]
            first = np.searchsorted(sorted_index, sorted_index, side="left")
            patch_ids = np.empty_like(index)
            patch_ids[order] = np.arange(index.shape[0]) - first  # position of the token within its image
            self._add_stage_tokens(stage_idx, tokens_t, index, patch_ids, carries_all[torch.from_numpy(index)])

    def _check_labels(self, labels: Tensor | np.ndarray) -> Tensor:
        labels_t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).cpu()
        if labels_t.ndim != 2 or labels_t.shape[1] != self.num_classes:
            raise PrototypeBankError(f"CPI labels must be [B, {self.num_classes}], got {tuple(labels_t.shape)}")
        return labels_t

    def _register_images(self, labels: Tensor, indices: np.ndarray) -> Tensor:
        """Count the images' classes once; refuse images added twice. Returns carries ``[B, C]``."""
        index_list = indices.tolist()
        repeated = self._seen_indices.intersection(index_list)
        if repeated or len(set(index_list)) != len(index_list):
            raise PrototypeBankError(
                f"CPI: image indices added twice (e.g. {sorted(repeated)[:5]}); each image must be "
                "added once or its patches would be over-represented"
            )
        self._seen_indices.update(index_list)
        self.images_seen += len(index_list)
        carries = labels > 0
        self.class_counts += carries.sum(0).numpy().astype(np.int64)
        return carries

    def _add_stage_tokens(
        self,
        stage_idx: int,
        tokens: Tensor,
        image_ids: np.ndarray,
        patch_ids: np.ndarray,
        token_carries: Tensor,
    ) -> None:
        """Route flat tokens ``[M, C]`` to the pools of the classes their image carries."""
        stage = self.stage_names[stage_idx]
        channels = self._channels.setdefault(stage, int(tokens.shape[1]))
        if tokens.shape[1] != channels:
            raise PrototypeBankError(f"CPI stage {stage!r}: channel count changed from {channels} to {tokens.shape[1]}")
        tokens = F.normalize(tokens.detach().float(), dim=-1).to("cpu", torch.float16)
        keys = _patch_keys(self.cfg.seed, stage_idx, image_ids, patch_ids)
        token_carries = token_carries.cpu()
        for c in torch.nonzero(token_carries.any(0)).flatten().tolist():
            rows = torch.nonzero(token_carries[:, c]).flatten()
            self._pool[stage][c].append((keys[rows.numpy()], tokens[rows]))
            self._pool_sizes[stage][c] += rows.numel()
            if self._pool_sizes[stage][c] > 2 * self.cfg.max_patches_per_class:
                self._compact(stage, c)

    def _compact(self, stage: str, c: int) -> tuple[np.ndarray, Tensor]:
        chunks = self._pool[stage][c]
        keys = np.concatenate([k for k, _ in chunks]) if chunks else np.zeros(0, np.uint64)
        tokens = torch.cat([t for _, t in chunks]) if chunks else torch.zeros(0, self._channels.get(stage, 0))
        order = np.argsort(keys, kind="stable")[: self.cfg.max_patches_per_class]
        keys, tokens = keys[order], tokens[torch.from_numpy(order)]
        self._pool[stage][c] = [(keys, tokens)]
        self._pool_sizes[stage][c] = keys.shape[0]
        return keys, tokens

    def allocation(self) -> list[AllocationRow]:
        return allocate_prototypes(self.class_counts, self.cfg, self.class_names)

    def build(self, device: str | torch.device | None = None) -> PrototypeBank:
        """Allocate prototypes from the class counts and cluster each class's patches per stage.

        A class with fewer sampled patches than K_c gets K reduced to its patch count (logged as a
        warning and recorded in ``metadata['reduced']``): duplicating patches would create
        prototypes that split the same assignment mass and carry no extra clue.
        """
        if self.images_seen == 0:
            raise PrototypeBankError("CPI: no images were added")
        rows = self.allocation()
        logger.debug("CPI prototype allocation:\n%s", format_allocation_table(rows))  # the step logs it once
        device = torch.device(device) if device is not None else torch.device("cpu")
        prototypes: dict[str, Tensor] = {}
        owners: dict[str, Tensor] = {}
        reduced: list[dict[str, Any]] = []
        patches_used: dict[str, list[int]] = {}
        objectives: dict[str, list[float]] = {}
        jobs = [(s, r) for s in self.stage_names for r in rows]
        stage_protos: dict[str, list[Tensor]] = {s: [] for s in self.stage_names}
        stage_owners: dict[str, list[Tensor]] = {s: [] for s in self.stage_names}
        for stage in self.stage_names:
            patches_used[stage] = [0] * self.num_classes
            objectives[stage] = [math.nan] * self.num_classes
        for stage, row in tqdm(jobs, desc="CPI k-means", unit="class", leave=False):
            _, tokens = self._compact(stage, row.class_id)
            n = tokens.shape[0]
            patches_used[stage][row.class_id] = int(n)
            k = row.prototypes
            if n < k:
                logger.warning(
                    "CPI stage %s class %d (%s): only %d patches for K_c=%d; using K=%d",
                    stage,
                    row.class_id,
                    row.class_name,
                    n,
                    k,
                    n,
                )
                reduced.append({"stage": stage, "class_id": row.class_id, "allocated": k, "used": int(n)})
                k = int(n)
            result = spherical_kmeans(
                tokens.to(device, torch.float32),
                k,
                iters=self.cfg.kmeans_iters,
                restarts=self.cfg.kmeans_restarts,
                tol=self.cfg.kmeans_tol,
                seed=self.cfg.seed + 7919 * row.class_id,
            )
            objectives[stage][row.class_id] = result.objective
            stage_protos[stage].append(result.centroids.float().cpu())
            stage_owners[stage].append(torch.full((k,), row.class_id, dtype=torch.int64))
        for stage in self.stage_names:
            prototypes[stage] = F.normalize(torch.cat(stage_protos[stage]), dim=1)
            owners[stage] = torch.cat(stage_owners[stage])
        metadata = {
            "source": "cpi",
            "cpi_config": asdict(self.cfg),
            "images": int(self.images_seen),
            "patches_per_class": patches_used,
            "kmeans_mean_cosine": objectives,
            "reduced": reduced,
        }
        return PrototypeBank(self.stage_names, prototypes, owners, tuple(rows), self.num_classes, metadata)

    def _as_stage_list(self, stage_features: Sequence[Tensor] | Mapping[str, Tensor]) -> list[Tensor]:
        if isinstance(stage_features, Mapping):
            missing = [s for s in self.stage_names if s not in stage_features]
            if missing:
                raise PrototypeBankError(f"CPI: features for stage(s) {missing} missing")
            return [stage_features[s] for s in self.stage_names]
        features = list(stage_features)
        if len(features) != len(self.stage_names):
            raise PrototypeBankError(f"CPI: {len(features)} feature tensors for stages {list(self.stage_names)}")
        return features


def build_prototype_bank(
    stage_tokens: Mapping[str, Tensor] | Mapping[str, tuple[Tensor | np.ndarray, Tensor | np.ndarray]],
    image_labels: Tensor | np.ndarray,
    cfg: CPIConfig,
    class_names: Sequence[str] | None = None,
    image_indices: Tensor | np.ndarray | Sequence[int] | None = None,
    device: str | torch.device | None = None,
) -> PrototypeBank:
    """CPI on in-memory features, keyed by stage name (shallow -> deep), in one of two layouts:

    * per image: ``stage_tokens[stage]`` ``[N, P, C_s]`` tokens or ``[N, C_s, H, W]`` maps with
      ``image_labels [N, num_classes]`` (row i = image i; ``image_indices`` optional);
    * flat: ``stage_tokens[stage] = (tokens [M, C_s], image_index [M])`` indexing rows of
      ``image_labels`` (the pipeline's extracted-token layout).

    Labels may be multi-hot or soft (carrying = value > 0). See :class:`PrototypeBankBuilder` for
    the streaming version (same result for the same image indices).
    """
    labels = torch.as_tensor(np.asarray(image_labels) if not isinstance(image_labels, Tensor) else image_labels)
    if labels.ndim != 2:
        raise PrototypeBankError(f"CPI image labels must be [N, num_classes], got {tuple(labels.shape)}")
    builder = PrototypeBankBuilder(labels.shape[1], list(stage_tokens.keys()), cfg, class_names)
    values = list(stage_tokens.values())
    if values and all(isinstance(v, tuple) for v in values):
        if image_indices is not None:
            raise PrototypeBankError("CPI: flat (tokens, image_index) input carries its own indices")
        builder.add_tokens(stage_tokens, labels)  # type: ignore[arg-type]
    else:
        builder.add(stage_tokens, labels, image_indices)  # type: ignore[arg-type]
    return builder.build(device=device)


def _to_tokens(features: Tensor, stage: str) -> Tensor:
    """``[B, C, H, W]`` maps or ``[B, N, C]`` tokens -> ``[B, N, C]`` (detached)."""
    features = features.detach()
    if features.ndim == 4:
        return features.flatten(2).transpose(1, 2)
    if features.ndim == 3:
        return features
    raise PrototypeBankError(
        f"CPI stage {stage!r}: expected [B, C, H, W] maps or [B, N, C] tokens, got {tuple(features.shape)}"
    )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrap-around arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _patch_keys(seed: int, stage_idx: int, image_ids: np.ndarray, patch_ids: np.ndarray) -> np.ndarray:
    """Pseudo-random uint64 key per (image, patch) token, independent of batching."""
    base = _splitmix64(np.array([(int(seed) & 0xFFFFFFFF) << 8 | stage_idx], dtype=np.uint64))[0]
    ids = image_ids.astype(np.uint64) * np.uint64(1 << 20) + patch_ids.astype(np.uint64)
    return _splitmix64(ids ^ base)


def _as_index_array(indices: Tensor | np.ndarray | Sequence[int]) -> np.ndarray:
    array = indices.detach().cpu().numpy() if isinstance(indices, Tensor) else np.asarray(indices)
    return array.astype(np.int64).reshape(-1)
