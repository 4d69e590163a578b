"""MCCL model components: backbone, CPI, MCC, PKI (label embeddings, GCN, decoder), losses, factory.

The docstrings mark what comes from the paper, what from the code MCCL builds on (Query2Label,
ML-GCN, ASL, ProtoSeg/PIP-Net) and what is our default; every default is a field of
:class:`ModelConfig`.
"""

from .archs import ARCHS, ArchSpec, arch_spec
from .backbone import Backbone, BackboneWeightsError, build_classifier, resolve_weights
from .config import (
    BackboneConfig,
    ConfigError,
    CPIConfig,
    LossConfig,
    MCCConfig,
    ModelConfig,
    PKIConfig,
)
from .cpi import (
    AllocationRow,
    PrototypeBank,
    PrototypeBankBuilder,
    PrototypeBankError,
    allocate_prototypes,
    build_prototype_bank,
    format_allocation_table,
    random_prototype_bank,
)
from .kmeans import KMeansResult, spherical_kmeans
from .loss import AsymmetricLoss, MultiLabelBCELoss
from .mcc import ClueState, CompositionalClues
from .mccl import (
    BaselineModel,
    ClueExplanation,
    MCCLModel,
    ModelBuildError,
    ModelOutput,
    build_loss,
    build_model,
    load_model_from_state_dict,
)
from .pki import (
    ClueDecoder,
    EmptyLabelGraphError,
    GroupWiseLinear,
    LabelGCN,
    LabelGraph,
    LabelQueries,
    PositionEmbeddingSine2D,
    build_label_embeddings,
    build_label_graph,
    compute_label_embeddings,
    label_texts,
    load_label_embeddings,
)

__all__ = [
    "ARCHS",
    "AllocationRow",
    "ArchSpec",
    "ClueExplanation",
    "build_label_embeddings",
    "Backbone",
    "AsymmetricLoss",
    "BackboneConfig",
    "BackboneWeightsError",
    "BaselineModel",
    "ClueDecoder",
    "ClueState",
    "CompositionalClues",
    "ConfigError",
    "CPIConfig",
    "EmptyLabelGraphError",
    "GroupWiseLinear",
    "KMeansResult",
    "LabelGCN",
    "LabelGraph",
    "LabelQueries",
    "LossConfig",
    "MCCConfig",
    "MCCLModel",
    "ModelBuildError",
    "ModelConfig",
    "ModelOutput",
    "MultiLabelBCELoss",
    "PKIConfig",
    "PositionEmbeddingSine2D",
    "PrototypeBank",
    "PrototypeBankBuilder",
    "PrototypeBankError",
    "allocate_prototypes",
    "arch_spec",
    "build_classifier",
    "build_label_graph",
    "build_loss",
    "build_model",
    "build_prototype_bank",
    "compute_label_embeddings",
    "format_allocation_table",
    "label_texts",
    "load_label_embeddings",
    "load_model_from_state_dict",
    "random_prototype_bank",
    "resolve_weights",
    "spherical_kmeans",
]
