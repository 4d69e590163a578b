"""CPI: class-specific prototype initialisation and the ``PrototypeBank`` artifact.

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

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from .config import CPIConfig
from .kmeans import spherical_kmeans

logger = logging.getLogger(__name__)

BANK_FORMAT_VERSION = 1
_METADATA_KEY = "mccl_prototype_bank"


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
        raise PrototypeBankError(
            f"classes without training images cannot get prototypes: {', '.join(zero)}"
        )
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


@dataclass
class PrototypeBank:
    """Per-stage class-owned prototypes: the CPI artifact that training loads.

    ``prototypes[stage]``: float32 ``[K_s, C_s]``, unit rows. ``owners[stage]``: int64 ``[K_s]``
    class id per prototype, sorted by class. ``allocation``: the frequency-aware table.
    ``metadata``: JSON-serialisable provenance (source ``cpi``/``random``, config, patch counts).
    """

    stages: tuple[str, ...]
    prototypes: dict[str, Tensor]
    owners: dict[str, Tensor]
    allocation: tuple[AllocationRow, ...]
    num_classes: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stages = tuple(self.stages)
        self.allocation = tuple(self.allocation)
        self.validate()

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(int(self.prototypes[s].shape[1]) for s in self.stages)

    def num_prototypes(self, stage: str) -> int:
        return int(self.prototypes[stage].shape[0])

    def validate(self, source: str = "prototype bank") -> None:
        """Check shapes, unit norm and owner ids; raises :class:`PrototypeBankError`."""
        if not self.stages:
            raise PrototypeBankError(f"{source}: no stages")
        if len(self.allocation) != self.num_classes:
            raise PrototypeBankError(
                f"{source}: allocation has {len(self.allocation)} rows for {self.num_classes} classes"
            )
        for stage in self.stages:
            if stage not in self.prototypes or stage not in self.owners:
                raise PrototypeBankError(f"{source}: stage {stage!r} lacks prototypes or owners")
            protos, owners = self.prototypes[stage], self.owners[stage]
            if protos.ndim != 2 or owners.ndim != 1 or protos.shape[0] != owners.shape[0]:
                raise PrototypeBankError(
                    f"{source}: stage {stage!r} has prototypes {tuple(protos.shape)} and owners "
                    f"{tuple(owners.shape)}; expected [K, C] and [K]"
                )
            if protos.dtype != torch.float32 or owners.dtype != torch.int64:
                raise PrototypeBankError(
                    f"{source}: stage {stage!r} expects float32 prototypes and int64 owners, got "
                    f"{protos.dtype} / {owners.dtype}"
                )
            if not torch.isfinite(protos).all():
                raise PrototypeBankError(f"{source}: stage {stage!r} has non-finite prototypes")
            norms = protos.norm(dim=1)
            if not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
                raise PrototypeBankError(f"{source}: stage {stage!r} prototypes are not unit norm")
            if owners.numel() and (owners.min() < 0 or owners.max() >= self.num_classes):
                raise PrototypeBankError(
                    f"{source}: stage {stage!r} owner ids outside [0, {self.num_classes})"
                )
            orphans = sorted(set(range(self.num_classes)) - set(owners.tolist()))
            if orphans:
                raise PrototypeBankError(f"{source}: stage {stage!r} classes {orphans} own no prototype")

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (tensors + JSON metadata); no pickle involved."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, Tensor] = {}
        for stage in self.stages:
            tensors[f"prototypes.{stage}"] = self.prototypes[stage].detach().float().cpu().contiguous()
            tensors[f"owners.{stage}"] = self.owners[stage].detach().long().cpu().contiguous()
        header = {
            "format_version": BANK_FORMAT_VERSION,
            "stages": list(self.stages),
            "num_classes": self.num_classes,
            "allocation": [asdict(r) for r in self.allocation],
            "metadata": self.metadata,
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={_METADATA_KEY: json.dumps(header)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PrototypeBank":
        """Load and validate a bank written by :meth:`save`; clear errors for bad files."""
        path = Path(path)
        if not path.is_file():
            raise PrototypeBankError(f"prototype bank file {path} does not exist (run the CPI step first)")
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                raw_meta = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise PrototypeBankError(f"prototype bank file {path} is not a readable safetensors file: {exc}") from exc
        if _METADATA_KEY not in raw_meta:
            raise PrototypeBankError(f"prototype bank file {path} lacks the {_METADATA_KEY!r} header")
        try:
            header = json.loads(raw_meta[_METADATA_KEY])
            version = header["format_version"]
            stages = tuple(header["stages"])
            num_classes = int(header["num_classes"])
            allocation = tuple(AllocationRow(**row) for row in header["allocation"])
            metadata = dict(header.get("metadata", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise PrototypeBankError(f"prototype bank file {path}: malformed header ({exc})") from exc
        if version != BANK_FORMAT_VERSION:
            raise PrototypeBankError(
                f"prototype bank file {path}: format version {version}, expected {BANK_FORMAT_VERSION}"
            )
        missing = [
            key for s in stages for key in (f"prototypes.{s}", f"owners.{s}") if key not in tensors
        ]
        if missing:
            raise PrototypeBankError(f"prototype bank file {path}: missing tensors {missing}")
        try:
            return cls(
                stages,
                {s: tensors[f"prototypes.{s}"] for s in stages},
                {s: tensors[f"owners.{s}"] for s in stages},
                allocation,
                num_classes,
                metadata,
            )
        except PrototypeBankError as exc:
            raise PrototypeBankError(f"prototype bank file {path}: {exc}") from exc


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
                raise PrototypeBankError(
                    f"CPI stage {stage!r}: {tokens.shape[0]} feature rows for {batch} labels"
                )
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
            self._add_stage_tokens(
                stage_idx, tokens_t, index, patch_ids, carries_all[torch.from_numpy(index)]
            )

    def _check_labels(self, labels: Tensor | np.ndarray) -> Tensor:
        labels_t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).cpu()
        if labels_t.ndim != 2 or labels_t.shape[1] != self.num_classes:
            raise PrototypeBankError(
                f"CPI labels must be [B, {self.num_classes}], got {tuple(labels_t.shape)}"
            )
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
            raise PrototypeBankError(
                f"CPI stage {stage!r}: channel count changed from {channels} to {tokens.shape[1]}"
            )
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
        logger.info("CPI prototype allocation:\n%s", format_allocation_table(rows))
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
                    stage, row.class_id, row.class_name, n, k, n,
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
            raise PrototypeBankError(
                f"CPI: {len(features)} feature tensors for stages {list(self.stage_names)}"
            )
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


def random_prototype_bank(
    stage_channels: Mapping[str, int],
    class_counts: Sequence[int] | np.ndarray,
    cfg: CPIConfig,
    class_names: Sequence[str] | None = None,
) -> PrototypeBank:
    """"No CPI" ablation: the same frequency-aware allocation, random unit prototypes (seeded)."""
    rows = allocate_prototypes(class_counts, cfg, class_names)
    logger.info("random prototype allocation (no CPI):\n%s", format_allocation_table(rows))
    generator = torch.Generator().manual_seed(int(cfg.seed))
    owners = torch.cat([torch.full((r.prototypes,), r.class_id, dtype=torch.int64) for r in rows])
    prototypes = {
        stage: F.normalize(torch.randn(owners.numel(), int(ch), generator=generator), dim=1)
        for stage, ch in stage_channels.items()
    }
    return PrototypeBank(
        tuple(stage_channels.keys()),
        prototypes,
        {s: owners.clone() for s in stage_channels},
        tuple(rows),
        len(rows),
        {"source": "random", "cpi_config": asdict(cfg)},
    )


def _class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [f"class_{i}" for i in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise PrototypeBankError(f"{len(names)} class names for {num_classes} classes")
    return names


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
