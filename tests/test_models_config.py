"""ModelConfig: nested from_dict/to_dict, unknown keys and invalid values fail loudly."""

from __future__ import annotations

import pytest
import yaml

from mccl_core.models import ConfigError, ModelConfig


def test_defaults_are_the_spec_values():
    cfg = ModelConfig()
    assert cfg.variant == "mccl" and cfg.use_cpi
    assert (cfg.backbone.arch, cfg.backbone.weights) == ("resnet101", "imagenet")
    assert cfg.backbone.stages == ("layer3", "layer4") and cfg.backbone.pretrained
    assert (cfg.cpi.prototypes_per_class, cfg.cpi.exponent, cfg.cpi.k_min, cfg.cpi.k_max) == (8.0, 1.0, 2, 32)
    assert (cfg.mcc.temperature, cfg.mcc.residual, cfg.mcc.momentum) == (0.1, 0.0, 0.999)
    assert (cfg.pki.tau, cfg.pki.p, cfg.pki.gcn_layers) == (0.1, 0.2, 2)
    assert (cfg.pki.dim, cfg.pki.decoder_layers, cfg.pki.heads, cfg.pki.ff_dim, cfg.pki.dropout) == (
        512,
        2,
        8,
        2048,
        0.1,
    )
    assert (cfg.loss.gamma_neg, cfg.loss.gamma_pos, cfg.loss.clip, cfg.loss.reduction) == (2.0, 0.0, 0.05, "mean")
    assert cfg.loss_kind == "asl" and ModelConfig(variant="baseline").loss_kind == "bce"


def test_roundtrip_through_yaml():
    text = """
    variant: mccl
    use_cpi: false
    backbone: {arch: resnet50, stages: [layer4], weights: none}
    mcc: {enabled: true, temperature: 0.05, momentum: 0.99}
    pki: {use_gcn: false, dim: 64, heads: 4, decoder_layers: 1}
    loss: {reduction: sum, gamma_neg: 4}
    """
    cfg = ModelConfig.from_dict(yaml.safe_load(text))
    assert cfg.backbone.stages == ("layer4",) and cfg.backbone.arch == "resnet50"
    assert cfg.mcc.temperature == 0.05 and cfg.pki.dim == 64 and cfg.loss.gamma_neg == 4.0
    assert isinstance(cfg.loss.gamma_neg, float)
    again = ModelConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg
    assert cfg.to_dict()["backbone"]["stages"] == ["layer4"]


@pytest.mark.parametrize(
    "data,message",
    [
        ({"pki": {"tauu": 0.1}}, r"pki\.tauu"),
        ({"unknown_block": {}}, r"unknown_block"),
        ({"mcc": {"enabled": "yes"}}, r"mcc\.enabled"),
        ({"pki": {"dim": "big"}}, r"pki\.dim"),
        ({"variant": "q2l"}, r"variant"),
        ({"backbone": {"arch": "resnet42"}}, r"backbone\.arch"),
        ({"backbone": {"depth": 50}}, r"backbone\.depth"),
        ({"backbone": {"arch": "efficientnet_lite0", "stages": ["layer3", "layer4"]}}, r"stage1.*stage4"),
        ({"backbone": {"arch": "efficientnet_lite0", "stages": ["stage4"], "weights": "imagenet"}}, r"package"),
        ({"backbone": {"arch": "resnet50", "weights": "package"}}, r"no installable package"),
        ({"backbone": {"stages": ["layer4", "layer3"]}}, r"shallow -> deep"),
        ({"backbone": {"stages": "layer4"}}, r"backbone\.stages"),
        ({"mcc": {"temperature": 0}}, r"mcc\.temperature"),
        ({"pki": {"dim": 60, "heads": 8}}, r"pki\.dim"),
        ({"cpi": {"k_min": 5, "k_max": 3}}, r"k_min"),
        ({"loss": {"reduction": "avg"}}, r"loss\.reduction"),
        ({"backbone": 3}, r"backbone: expected a mapping"),
    ],
)
def test_invalid_config_raises_with_dotted_key(data, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(data)


def test_normalisation_follows_the_weights():
    lite = {"arch": "efficientnet_lite0", "stages": ["stage3", "stage4"]}
    assert ModelConfig.from_dict({"backbone": {**lite, "weights": "package"}}).backbone.normalization() == (
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
    )
    resnet = ModelConfig.from_dict({"backbone": {"arch": "resnet101", "weights": "imagenet"}}).backbone
    assert resnet.normalization() == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize(
    "backbone,residual,warns",
    [
        ({"arch": "resnet18", "weights": "imagenet"}, 0.5, None),
        ({"arch": "resnet18", "weights": "none"}, 0.0, "random-init tokens are nearly parallel"),
        ({"arch": "resnet18", "weights": "imagenet"}, 0.0, None),
        ({"arch": "resnet18", "weights": "none"}, 0.5, None),
    ],
)
def test_residual_warning_matches_the_weights(backbone, residual, warns, caplog):
    with caplog.at_level("WARNING", logger="mccl_core.models.config"):
        ModelConfig.from_dict({"backbone": backbone, "mcc": {"residual": residual}})
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert (warns in messages and "mcc.combine concat" in messages) if warns else messages == ""


def test_concat_needs_no_random_init_warning(caplog):
    """Under ``combine: concat`` the token reaches the decoder whatever the rebuild does."""
    with caplog.at_level("WARNING", logger="mccl_core.models.config"):
        ModelConfig.from_dict({"backbone": {"arch": "resnet18", "weights": "none"}, "mcc": {"combine": "concat"}})
    assert caplog.records == []
