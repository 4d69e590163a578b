"""MCCL model, the plain baseline, and the ``build_model`` factory.

Training-loop API shared by both models:

* ``model(images) -> ModelOutput(logits [B, C], clue_state)``;
* ``model.loss(output, labels) -> scalar`` (configured loss: ASL for MCCL, BCE for the baseline);
* ``model.update_prototypes(output, labels)`` after each optimiser step (no-op without MCC);
* ``model.prototype_health(reset) -> dict`` (empty without MCC);
* ``model.backbone.forward_features(images)`` / ``model.backbone.stage_channels`` for CPI.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .backbone import Backbone
from .config import ModelConfig
from .cpi import AllocationRow, PrototypeBank, random_prototype_bank
from .loss import AsymmetricLoss, MultiLabelBCELoss
from .mcc import ClueState, CompositionalClues
from .pki import ClueDecoder, LabelGraph, LabelQueries, build_label_graph

logger = logging.getLogger(__name__)


class ModelBuildError(ValueError):
    """An input that the configured variant needs is missing or inconsistent."""


@dataclass
class ModelOutput:
    """``logits [B, C]``; ``clue_state``: detached inputs of the prototype update (None without MCC)."""

    logits: Tensor
    clue_state: ClueState | None = None


@dataclass
class ClueExplanation:
    """What one forward pass of :meth:`MCCLModel.explain` saw, per stage ``s`` of ``stages``.

    ``logits [B, C]``; ``grid_sizes[s] = (H_s, W_s)`` (token ``n`` is row ``n // W_s``, column
    ``n % W_s`` of the input's grid); ``attention[s] [B, C, H_s*W_s]``: the last decoder layer's
    cross-attention of each intent query (mean over heads; over all stages together it sums to 1);
    ``assignments[s] [B, H_s*W_s, K_s]`` (rows sum to 1) and ``owners[s] [K_s]`` (owner class of
    each prototype): None when MCC is off.
    """

    logits: Tensor
    stages: tuple[str, ...]
    grid_sizes: list[tuple[int, int]]
    attention: list[Tensor]
    assignments: list[Tensor] | None
    owners: list[Tensor] | None

    def attention_maps(self) -> list[Tensor]:
        """Per stage ``[B, C, H_s, W_s]``."""
        return [a.reshape(a.shape[0], a.shape[1], h, w) for a, (h, w) in zip(self.attention, self.grid_sizes)]

    def class_assignment_maps(self, num_classes: int) -> list[Tensor] | None:
        """Per stage ``[B, C, H_s, W_s]``: each patch's assignment mass on the prototypes owned by
        class c (sums to 1 over c at every patch). None without MCC."""
        if self.assignments is None or self.owners is None:
            return None
        maps = []
        for assign, owners, (h, w) in zip(self.assignments, self.owners, self.grid_sizes):
            onehot = torch.nn.functional.one_hot(owners.long(), num_classes).to(assign)  # [K, C]
            per_class = assign @ onehot  # [B, N, C]
            maps.append(per_class.transpose(1, 2).reshape(assign.shape[0], num_classes, h, w))
        return maps

    def clue_mass(self) -> list[Tensor] | None:
        """Per stage ``[B, C, K_s]``: how much of intent c's attention lands on each prototype,
        ``sum_n attention[b, c, n] * assignments[b, n, k]`` (the intent's clues). None without MCC."""
        if self.assignments is None:
            return None
        return [att @ assign for att, assign in zip(self.attention, self.assignments)]

    def top_clues(self, image: int, intent: int, k: int = 5) -> list[dict[str, Any]]:
        """Intent ``intent``'s ``k`` heaviest clues on image ``image``: ``[{"prototype": "stage:index",
        "stage", "index", "owner" (class id), "mass"}]``, heaviest first. ``mass`` is the share of the
        intent's attention that reaches the prototype through the patches' assignments; over all
        prototypes of all stages it sums to 1. Empty without MCC."""
        if self.assignments is None or self.owners is None:
            return []
        # Only this (image, intent) row of clue_mass(): one [N_s] x [N_s, K_s] product per stage.
        masses = [att[image, intent] @ assign[image] for att, assign in zip(self.attention, self.assignments)]
        flat = torch.cat(masses)
        stage_of = [s for s, m in zip(self.stages, masses) for _ in range(m.shape[-1])]
        index_of = [i for m in masses for i in range(m.shape[-1])]
        owner_of = torch.cat([o.cpu() for o in self.owners]).tolist()
        top = torch.topk(flat, min(k, flat.numel()))
        return [
            {
                "prototype": f"{stage_of[j]}:{index_of[j]}",
                "stage": stage_of[j],
                "index": index_of[j],
                "owner": int(owner_of[j]),
                "mass": float(v),
            }
            for v, j in zip(top.values.tolist(), top.indices.tolist())
        ]


class MCCLModel(nn.Module):
    """ResNet stages -> (MCC clue composition) -> label-query Transformer decoder -> logits.

    ``clues=None`` gives the "no MCC" ablation (raw tokens go to the decoder).
    """

    def __init__(
        self,
        backbone: Backbone,
        clues: CompositionalClues | None,
        queries: LabelQueries,
        decoder: ClueDecoder,
        loss_fn: nn.Module,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.clues = clues
        self.queries = queries
        self.decoder = decoder
        self.loss_fn = loss_fn
        self.num_classes = decoder.head.weight.shape[0]

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """Backbone feature maps ``[B, C_s, H_s, W_s]`` of the configured stages."""
        return self.backbone.forward_features(images)

    @staticmethod
    def maps_to_tokens(feature_maps: list[Tensor]) -> tuple[list[Tensor], list[tuple[int, int]]]:
        """``[B, C, H, W]`` maps -> ``[B, H*W, C]`` tokens and grid sizes (a free view for
        channels_last maps)."""
        grid_sizes = [(int(m.shape[2]), int(m.shape[3])) for m in feature_maps]
        return [m.flatten(2).transpose(1, 2) for m in feature_maps], grid_sizes

    def forward_clues(self, feature_maps: list[Tensor]) -> tuple[list[Tensor], list[tuple[int, int]], ClueState | None]:
        """Maps -> tokens ``[B, H*W, C_s]`` (rebuilt by MCC when enabled), grid sizes, update state."""
        tokens, grid_sizes = self.maps_to_tokens(feature_maps)
        if self.clues is None:
            return tokens, grid_sizes, None
        rebuilt, state = self.clues(tokens)
        return rebuilt, grid_sizes, state

    def forward_head(self, tokens: list[Tensor], grid_sizes: list[tuple[int, int]]) -> Tensor:
        """Decoder over the tokens with the GCN (or projected) label queries -> logits ``[B, C]``."""
        return self.decoder(tokens, grid_sizes, self.queries())

    def forward(self, images: Tensor) -> ModelOutput:
        tokens, grid_sizes, state = self.forward_clues(self.forward_features(images))
        return ModelOutput(self.forward_head(tokens, grid_sizes), state)

    def loss(self, output: ModelOutput, labels: Tensor) -> Tensor:
        return self.loss_fn(output.logits, labels)

    @torch.no_grad()
    def explain(self, images: Tensor) -> ClueExplanation:
        """Logits plus what explains them: the decoder's cross-attention of every intent query and
        the patches' soft assignments to the prototypes (see :class:`ClueExplanation`)."""
        feature_maps = self.forward_features(images)
        tokens, grid_sizes, state = self.forward_clues(feature_maps)
        logits, attention = self.decoder.forward_with_attention(tokens, grid_sizes, self.queries())
        stages = tuple(self.backbone.stages)
        splits = [h * w for h, w in grid_sizes]
        per_stage = list(torch.split(attention.float(), splits, dim=2))
        assignments = None
        owners = None
        if state is not None and self.clues is not None:
            assignments = [a.float() for a in state.assignments]
            owners = [self.clues.owners(s) for s in self.clues.stages]
        return ClueExplanation(
            logits=logits.float(),
            stages=stages,
            grid_sizes=[(int(h), int(w)) for h, w in grid_sizes],
            attention=per_stage,
            assignments=assignments,
            owners=owners,
        )

    def stage_gate_weights(self) -> dict[str, float]:
        """``{stage: weight}`` of the learned stage gate (empty without one)."""
        weights = self.decoder.stage_weights()
        if weights is None:
            return {}
        return {s: float(w) for s, w in zip(self.backbone.stages, weights.detach().cpu().tolist())}

    @torch.no_grad()
    def update_prototypes(self, output: ModelOutput, labels: Tensor) -> dict[str, Tensor]:
        """Momentum prototype update after the optimiser step; returns the number of prototypes
        updated per stage (0-d device tensors, so the step needs no host sync)."""
        if self.clues is None:
            return {}
        if output.clue_state is None:
            raise ValueError("update_prototypes needs the ModelOutput of an MCC forward (clue_state is None)")
        return self.clues.update_prototypes(output.clue_state, labels)

    def prototype_health(self, reset: bool = False) -> dict[str, float]:
        return {} if self.clues is None else self.clues.health(reset=reset)


class BaselineModel(nn.Module):
    """Plain backbone: global average pool of the deepest stage + linear (loss per ``loss.kind``)."""

    def __init__(self, backbone: Backbone, num_classes: int, loss_fn: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(backbone.stage_channels[-1], num_classes)
        self.loss_fn = loss_fn
        self.num_classes = num_classes

    def forward_features(self, images: Tensor) -> list[Tensor]:
        return self.backbone.forward_features(images)

    def forward(self, images: Tensor) -> ModelOutput:
        pooled = self.pool(self.forward_features(images)[-1]).flatten(1)
        return ModelOutput(self.fc(pooled), None)

    def loss(self, output: ModelOutput, labels: Tensor) -> Tensor:
        return self.loss_fn(output.logits, labels)

    def update_prototypes(self, output: ModelOutput, labels: Tensor) -> dict[str, Tensor]:
        return {}

    def prototype_health(self, reset: bool = False) -> dict[str, float]:
        return {}


def build_loss(cfg: ModelConfig) -> nn.Module:
    """ASL or BCE per ``cfg.loss`` (``kind='auto'``: ASL for MCCL, BCE for the baseline)."""
    if cfg.loss_kind == "bce":
        return MultiLabelBCELoss(reduction=cfg.loss.reduction)
    return AsymmetricLoss(
        gamma_neg=cfg.loss.gamma_neg,
        gamma_pos=cfg.loss.gamma_pos,
        clip=cfg.loss.clip,
        eps=cfg.loss.eps,
        reduction=cfg.loss.reduction,
    )


def build_model(
    cfg: ModelConfig,
    num_classes: int,
    label_embeddings: np.ndarray | None,
    cooccurrence: np.ndarray | None,
    prototype_bank: PrototypeBank | None,
) -> MCCLModel | BaselineModel:
    """Build the configured variant; raises :class:`ModelBuildError` naming a missing input.

    Needs, for ``variant='mccl'``: ``label_embeddings [C, E]`` always; ``cooccurrence [C, C]`` when
    ``pki.use_gcn`` or when ``use_cpi=False`` with MCC (its diagonal gives the class counts for the
    random prototypes' allocation); ``prototype_bank`` when MCC is enabled with ``use_cpi``.
    The baseline needs none of them.
    """
    if num_classes < 1:
        raise ModelBuildError(f"num_classes must be >= 1, got {num_classes}")
    if cfg.variant == "baseline":
        backbone = Backbone(dataclasses.replace(cfg.backbone, stages=(cfg.backbone.stages[-1],)))
        logger.info(
            "built baseline: %s %s + pool + linear, loss %s", cfg.backbone.arch, cfg.backbone.stages[-1], cfg.loss_kind
        )
        return BaselineModel(backbone, num_classes, build_loss(cfg))

    if label_embeddings is None:
        raise ModelBuildError(
            "MCCL (PKI) needs label embeddings [num_classes, 384]: compute them with "
            "mccl_core.models.compute_label_embeddings(label_texts(names, descriptions), cache_path)"
        )
    label_embeddings = np.asarray(label_embeddings, dtype=np.float32)
    if label_embeddings.ndim != 2 or label_embeddings.shape[0] != num_classes:
        raise ModelBuildError(f"label embeddings have shape {label_embeddings.shape}, expected [{num_classes}, D]")
    if not np.isfinite(label_embeddings).all():
        raise ModelBuildError("label embeddings contain non-finite values")
    if cooccurrence is not None:
        cooccurrence = np.asarray(cooccurrence, dtype=np.float64)
        if cooccurrence.shape != (num_classes, num_classes):
            raise ModelBuildError(
                f"co-occurrence matrix has shape {cooccurrence.shape}, expected ({num_classes}, {num_classes})"
            )

    graph = None
    if cfg.pki.use_gcn:
        if cooccurrence is None:
            raise ModelBuildError(
                "pki.use_gcn=true needs the training label co-occurrence counts [C, C] "
                "(mccl_core.data.cooccurrence_counts(train.label_matrix())), or set pki.use_gcn=false"
            )
        graph = build_label_graph(cooccurrence, tau=cfg.pki.tau, p=cfg.pki.p)
    backbone = Backbone.from_config(cfg.backbone)

    bank = None
    if cfg.mcc.enabled:
        bank = _resolve_bank(cfg, num_classes, backbone, cooccurrence, prototype_bank)
    elif prototype_bank is not None:
        logger.warning("mcc.enabled=false: the given prototype bank is not used")
    return _assemble_mccl(cfg, num_classes, backbone, label_embeddings, graph, bank)


def _assemble_mccl(
    cfg: ModelConfig,
    num_classes: int,
    backbone: Backbone,
    label_embeddings: np.ndarray,
    graph: LabelGraph | None,
    bank: PrototypeBank | None,
) -> MCCLModel:
    clues = None
    if bank is not None:
        clues = CompositionalClues(bank, cfg.mcc.temperature, cfg.mcc.residual, cfg.mcc.momentum, cfg.mcc.update,
                                   cfg.mcc.learn_residual, cfg.mcc.combine)  # fmt: skip
    queries = LabelQueries(label_embeddings, cfg.pki.dim, graph, cfg.pki.gcn_layers, cfg.pki.gcn_bias_init)
    decoder = ClueDecoder(
        clues.output_channels if clues is not None else backbone.stage_channels,
        num_classes,
        dim=cfg.pki.dim,
        layers=cfg.pki.decoder_layers,
        heads=cfg.pki.heads,
        ff_dim=cfg.pki.ff_dim,
        dropout=cfg.pki.dropout,
        stage_gate=cfg.pki.stage_gate,
        self_attention=cfg.pki.decoder_self_attention,
    )
    mcc = f"MCC on ({'CPI' if cfg.use_cpi else 'random'} prototypes)" if cfg.mcc.enabled else "MCC off (no prototypes)"
    logger.info(
        "built MCCL: %s stages=%s, %s, GCN=%s, decoder d=%d x%d, loss %s",
        cfg.backbone.arch,
        list(cfg.backbone.stages),
        mcc,
        cfg.pki.use_gcn,
        cfg.pki.dim,
        cfg.pki.decoder_layers,
        cfg.loss_kind,
    )
    return MCCLModel(backbone, clues, queries, decoder, build_loss(cfg))


def load_model_from_state_dict(
    cfg: ModelConfig, num_classes: int, state_dict: Mapping[str, Tensor]
) -> MCCLModel | BaselineModel:
    """Rebuild a trained model from its ``state_dict`` alone (serving/evaluation).

    Label embeddings, the normalised label graph and the prototypes are buffers of the state dict,
    so neither the text encoder, the co-occurrence counts nor the CPI bank are needed. Backbone
    weights are not fetched (``backbone.weights`` is ignored: the state dict supplies them).
    Loading is strict: a state dict of another variant/config raises with the offending keys.
    """
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, weights="none"))
    if cfg.variant == "baseline":
        model: MCCLModel | BaselineModel = build_model(cfg, num_classes, None, None, None)
    else:
        emb_key = "queries.label_embeddings"
        if emb_key not in state_dict:
            raise ModelBuildError(f"state dict has no {emb_key!r}: not an MCCL model state dict")
        label_embeddings = state_dict[emb_key].detach().cpu().float().numpy()
        backbone = Backbone.from_config(cfg.backbone)
        graph = None
        if cfg.pki.use_gcn:
            adj_key = "queries.gcn.adjacency"
            if adj_key not in state_dict:
                raise ModelBuildError(f"state dict has no {adj_key!r} but pki.use_gcn=true")
            adjacency = state_dict[adj_key].detach().cpu().float().numpy()
            off_diagonal = adjacency.copy()
            np.fill_diagonal(off_diagonal, 0.0)
            graph = LabelGraph(
                adjacency=adjacency,
                num_edges=int((off_diagonal > 0).sum()),
                isolated=np.flatnonzero((off_diagonal > 0).sum(axis=1) == 0).tolist(),
                max_conditional=float("nan"),
            )
        bank = None
        if cfg.mcc.enabled:
            bank = _bank_from_state_dict(cfg, num_classes, state_dict)
        model = _assemble_mccl(cfg, num_classes, backbone, label_embeddings, graph, bank)
    result = model.load_state_dict(dict(state_dict), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelBuildError(
            f"state dict does not match the configured model ({cfg.variant}): missing "
            f"{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}"
        )
    return model


def _bank_from_state_dict(cfg: ModelConfig, num_classes: int, state_dict: Mapping[str, Tensor]) -> PrototypeBank:
    prototypes, owners = {}, {}
    for stage in cfg.backbone.stages:
        p_key, o_key = f"clues.prototypes_{stage}", f"clues.owners_{stage}"
        if p_key not in state_dict or o_key not in state_dict:
            raise ModelBuildError(f"state dict lacks {p_key!r}/{o_key!r} but mcc.enabled=true")
        prototypes[stage] = state_dict[p_key].detach().cpu().float()
        owners[stage] = state_dict[o_key].detach().cpu().long()
    first = owners[cfg.backbone.stages[0]]
    per_class = torch.bincount(first, minlength=num_classes).tolist()
    rows = tuple(AllocationRow(c, f"class_{c}", 0, int(per_class[c])) for c in range(num_classes))
    return PrototypeBank(tuple(cfg.backbone.stages), prototypes, owners, rows, num_classes, {"source": "state_dict"})


def _resolve_bank(
    cfg: ModelConfig,
    num_classes: int,
    backbone: Backbone,
    cooccurrence: np.ndarray | None,
    prototype_bank: PrototypeBank | None,
) -> PrototypeBank:
    stages = tuple(cfg.backbone.stages)
    if not cfg.use_cpi:
        if prototype_bank is not None:
            logger.warning("use_cpi=false: ignoring the given CPI prototype bank, using random prototypes")
        if cooccurrence is None:
            raise ModelBuildError(
                "use_cpi=false (random prototypes) needs the class counts for the frequency-aware "
                "allocation: pass the co-occurrence counts (their diagonal is used)"
            )
        return random_prototype_bank(dict(zip(stages, backbone.stage_channels)), np.diag(cooccurrence), cfg.cpi)
    if prototype_bank is None:
        raise ModelBuildError(
            "MCCL with MCC needs a CPI prototype bank: run the CPI step (build_prototype_bank / "
            "PrototypeBankBuilder, then PrototypeBank.save) and pass PrototypeBank.load(path), "
            "or set use_cpi: false to get random prototypes"
        )
    if tuple(prototype_bank.stages) != stages:
        raise ModelBuildError(
            f"prototype bank stages {list(prototype_bank.stages)} differ from backbone.stages {list(stages)}"
        )
    if tuple(prototype_bank.stage_channels) != tuple(backbone.stage_channels):
        raise ModelBuildError(
            f"prototype bank channels {prototype_bank.stage_channels} differ from {cfg.backbone.arch} "
            f"stage channels {backbone.stage_channels}: the bank was built with another backbone"
        )
    if prototype_bank.num_classes != num_classes:
        raise ModelBuildError(f"prototype bank has {prototype_bank.num_classes} classes, the model {num_classes}")
    return prototype_bank
