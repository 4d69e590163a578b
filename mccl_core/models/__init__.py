"""MCCL model components: backbone, CPI, MCC, PKI (label embeddings, GCN, decoder), losses, factory.

See ``shared/spec/MCCL.md`` for what is [paper], [lineage] and [ours]; every [ours] default is a
field of :class:`ModelConfig`.
"""

from .backbone import BackboneWeightsError, ResNetBackbone, load_local_resnet_weights
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
    build_label_graph,
    compute_label_embeddings,
    label_texts,
    load_label_embeddings,
)

__all__ = [
    "AllocationRow",
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
    "ResNetBackbone",
    "allocate_prototypes",
    "build_label_graph",
    "build_loss",
    "build_model",
    "build_prototype_bank",
    "compute_label_embeddings",
    "format_allocation_table",
    "label_texts",
    "load_label_embeddings",
    "load_local_resnet_weights",
    "load_model_from_state_dict",
    "random_prototype_bank",
    "spherical_kmeans",
]
