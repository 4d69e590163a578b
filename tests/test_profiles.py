"""The paper profile is a complete params file whose values are the paper's (and its lineage's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mccl_core.config import load_params
from mccl_core.models import ModelConfig
from mccl_core.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "profiles" / "paper-intentonomy.yaml"


def test_paper_profile_has_every_section_of_params_yaml():
    assert set(load_params(PAPER)) == set(load_params(REPO / "params.yaml"))


def test_paper_profile_holds_the_spec_values(caplog):
    params = load_params(PAPER)
    assert params["data"] == {"source": "intentonomy", "root": "data/real"}
    with caplog.at_level("WARNING", logger="mccl_core.models.config"):
        model = ModelConfig.from_dict(params["model"])
    assert not caplog.records, "the paper profile must not trigger the residual/weights warning"
    # Backbone: ImageNet ResNet-101 V1 (the Q2L/HLEG lineage's weights), the last two stages.
    assert (model.variant, model.use_cpi) == ("mccl", True)
    assert (model.backbone.arch, model.backbone.weights, model.backbone.stages) == (
        "resnet101",
        "imagenet",
        ("layer3", "layer4"),
    )
    # Query2Label's geometry: the whole photo squashed to 224 x 224, for train and test alike.
    assert model.backbone.geometry == "resize"
    # CPI: frequency-aware, K_total = 8 x C, K in [2, 32], a = 1.
    cpi = model.cpi
    assert (cpi.prototypes_per_class, cpi.exponent, cpi.k_min, cpi.k_max) == (8.0, 1.0, 2, 32)
    # MCC: t = 0.1, pure rebuild, momentum 0.999.
    assert (model.mcc.enabled, model.mcc.temperature, model.mcc.residual, model.mcc.momentum) == (True, 0.1, 0.0, 0.999)
    assert model.mcc.update == "soft"  # the assignment-weighted update (docs/model.md)
    # PKI: tau 0.1 (0.4 empties the Intentonomy graph), p 0.2, 2 GCN layers, Q2L decoder sizes.
    pki = model.pki
    assert (pki.use_gcn, pki.tau, pki.p, pki.gcn_layers) == (True, 0.1, 0.2, 2)
    assert (pki.dim, pki.decoder_layers, pki.heads, pki.ff_dim, pki.dropout) == (512, 2, 8, 2048, 0.1)
    assert pki.decoder_self_attention is False  # Query2Label's rm_self_attn_dec
    # ASL with explicit kind (not "auto"), g- 2, g+ 0, clip 0.05.
    assert (model.loss.kind, model.loss.gamma_neg, model.loss.gamma_pos, model.loss.clip) == ("asl", 2.0, 0.0, 0.05)

    train = TrainConfig.from_dict(params["train"])
    assert (train.image_size, train.epochs, train.batch_size) == (224, 30, 64)
    assert (train.lr, train.weight_decay, train.pct_start, train.ema_decay) == (1e-4, 1e-2, 0.2, 0.9997)
    assert train.backbone_lr_scale == 1.0 and train.freeze_bn_stats
    assert train.augment and train.randaugment and train.erase_prob > 0  # RandAugment + Cutout
    assert (train.randaugment_ops, train.randaugment_magnitude) == (2, 15)  # Q2L's 2 ops, mean magnitude
    assert train.crop_scale_min == 1.0  # no random crop: the train view is the eval view
    assert train.ema_horizon_growth == 1.0  # the stated 0.9997 is in force from step 3,333 (of ~6k) on
    assert (train.precision, train.channels_last) == ("auto", True)  # bf16 + channels_last on GPU


@pytest.mark.parametrize("section", ["model", "train"])
def test_demo_defaults_differ_from_the_paper_only_where_two_cores_force_it(section):
    """The embedded default keeps the paper's method (pretrained, ASL) at demo size; feeding the
    decoder the token next to its rebuild (the paper: the rebuild alone) is the one model choice of
    ours, chosen on val (README: "MCC that cannot erase the token")."""
    demo = load_params(REPO / "params.yaml")[section]
    if section == "model":
        model = ModelConfig.from_dict(demo)
        assert model.backbone.pretrained and model.loss_kind == "asl"
        assert (model.mcc.combine, model.mcc.residual) == ("concat", 0.0)
        assert model.mcc.enabled and model.use_cpi and model.pki.use_gcn and model.variant == "mccl"
    else:
        train = TrainConfig.from_dict(demo)
        assert train.freeze_bn_stats and train.weight_decay == 1e-2


def test_under_the_paper_geometry_cpi_training_and_serving_see_the_same_view():
    """CPI clusters tokens of ``eval_transform`` views; with the profile's ``resize`` geometry and
    no random crop, a training image (flip, RandAugment and Cutout aside) is that same view of a
    3:2 photo, and the bundle the evaluate/explain/serve steps read rebuilds it too."""
    import dataclasses

    import numpy as np
    import torch
    from PIL import Image

    from mccl_core.models.bundle import BundleMeta
    from mccl_core.training.run import eval_transform, train_transform

    params = load_params(PAPER)
    model = ModelConfig.from_dict(params["model"])
    train = dataclasses.replace(
        TrainConfig.from_dict(params["train"]), image_size=48, randaugment=False, erase_prob=0.0
    )
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    cpi_view = eval_transform(model, 48)(photo)
    train_transform_ = train_transform(model, train)
    flips = [t for t in train_transform_.transforms if type(t).__name__ == "RandomHorizontalFlip"]
    assert len(flips) == 1
    flips[0].p = 0.0  # the one random step left in the profile's geometry path
    torch.testing.assert_close(train_transform_(photo), cpi_view)
    mean, std = model.backbone.normalization()
    meta = BundleMeta(model_config=model.to_dict(), class_names=["a"], class_descriptions=[""], image_size=48,
                      mean=list(mean), std=list(std))  # fmt: skip
    assert meta.geometry == "resize"
    from mccl_core.data.transforms import eval_transform_for

    torch.testing.assert_close(eval_transform_for(meta)(photo), cpi_view)
    # A bundle from before the key existed keeps the centre crop it was trained with.
    old = dataclasses.replace(meta, model_config={k: v for k, v in meta.model_config.items() if k != "backbone"})
    assert old.geometry == "center_crop" and not torch.allclose(eval_transform_for(old)(photo), cpi_view)
