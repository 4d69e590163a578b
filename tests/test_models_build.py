"""Model factory: every variant's shapes, training-loop API, gradients, weights, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torchvision

from mccl_core.config import ConfigError
from mccl_core.models import (
    Backbone,
    BackboneConfig,
    BackboneWeightsError,
    BaselineModel,
    MCCLModel,
    ModelBuildError,
    ModelConfig,
    build_model,
    build_prototype_bank,
    load_model_from_state_dict,
)

NUM_CLASSES = 5
IMAGE = 64


def _cfg(**overrides) -> ModelConfig:
    base = {
        "backbone": {"arch": "resnet18", "weights": "none"},
        "pki": {"dim": 64, "decoder_layers": 1, "heads": 4, "ff_dim": 128},
        "cpi": {"k_min": 2, "k_max": 4, "kmeans_restarts": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value
    return ModelConfig.from_dict(base)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, IMAGE, IMAGE, generator=g)
    labels = (torch.rand(6, NUM_CLASSES, generator=g) < 0.4).float()
    labels[torch.arange(5), torch.arange(5)] = 1.0  # every class present
    cooccurrence = (labels.T @ labels).numpy()
    embeddings = torch.nn.functional.normalize(torch.randn(NUM_CLASSES, 384, generator=g), dim=1).numpy()
    backbone = Backbone(BackboneConfig(arch="resnet18", weights="none"))
    with torch.no_grad():
        maps = backbone.eval().forward_features(images)
    bank = build_prototype_bank(dict(zip(backbone.stage_names, maps)), labels, _cfg().cpi)
    return images, labels, cooccurrence, embeddings, bank


VARIANTS = {
    "mccl": {},
    "no_cpi": {"use_cpi": False},
    "no_mcc": {"mcc": {"enabled": False}},
    "concat": {"mcc": {"combine": "concat"}},
    "no_gcn": {"pki": {"use_gcn": False}},
    "baseline": {"variant": "baseline"},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_trains_one_step(name, data):
    images, labels, cooccurrence, embeddings, bank = data
    torch.manual_seed(0)
    model = build_model(_cfg(**VARIANTS[name]), NUM_CLASSES, embeddings, cooccurrence, bank)
    output = model(images)
    assert output.logits.shape == (6, NUM_CLASSES)
    has_mcc = name in ("mccl", "no_cpi", "concat", "no_gcn")
    assert (output.clue_state is not None) == has_mcc
    loss = model.loss(output, labels)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    # No unused parameters (DDP without find_unused_parameters): every parameter got a gradient.
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert model.backbone.trunk.conv1.weight.grad.abs().sum() > 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    protos_before = {k: v.clone() for k, v in model.state_dict().items() if "prototypes_" in k}
    optimizer.step()
    for key, value in protos_before.items():  # the optimiser does not touch prototype buffers
        assert torch.equal(model.state_dict()[key], value)
    updated = model.update_prototypes(output, labels)
    health = model.prototype_health(reset=True)
    if has_mcc:
        assert set(updated) == {"layer3", "layer4"} and int(updated["layer3"]) > 0
        assert health["updates"] == 1 and "layer4/never_assigned" in health
        assert not any("prototypes" in n for n, _ in model.named_parameters())
    else:
        assert updated == {} and health == {}


def test_frozen_backbone_is_a_linear_probe(data):
    """``backbone.frozen``: no backbone parameter trains (the optimiser never sees them), the head does."""
    from mccl_core.training.config import TrainConfig
    from mccl_core.training.loop import _param_groups

    images, labels, cooccurrence, embeddings, bank = data
    model = build_model(
        _cfg(variant="baseline", backbone={"frozen": True}), NUM_CLASSES, embeddings, cooccurrence, bank
    )
    model.loss(model(images), labels).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    groups = _param_groups(model, TrainConfig(lr=0.1))
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == {
        id(p) for n, p in model.named_parameters() if not n.startswith("backbone.")
    }
    assert all(p.grad is not None for p in groups[0]["params"])


def test_baseline_is_pool_linear_bce_on_the_deepest_stage(data):
    images, labels, *_ = data
    model = build_model(_cfg(variant="baseline"), NUM_CLASSES, None, None, None)
    assert isinstance(model, BaselineModel) and model.backbone.stage_names == ("layer4",)
    assert model.fc.in_features == 512 and not hasattr(model.backbone, "fc")
    pooled = model.backbone.forward_features(images)[-1].mean(dim=(2, 3))
    torch.testing.assert_close(model(images).logits, model.fc(pooled))


def test_mcc_uses_the_bank_and_decoder_sees_rebuilt_tokens(data):
    images, _, cooccurrence, embeddings, bank = data
    model = build_model(_cfg(), NUM_CLASSES, embeddings, cooccurrence, bank)
    assert isinstance(model, MCCLModel)
    for stage in bank.stages:
        torch.testing.assert_close(model.clues.prototypes(stage), bank.prototypes[stage])
    maps = model.forward_features(images)
    assert [m.shape[1] for m in maps] == list(model.backbone.stage_channels) == [256, 512]
    tokens, grids, state = model.forward_clues(maps)
    assert grids == [(4, 4), (2, 2)]
    torch.testing.assert_close(tokens[1], state.assignments[1] @ model.clues.prototypes("layer4"))
    concat = build_model(_cfg(mcc={"combine": "concat"}), NUM_CLASSES, embeddings, cooccurrence, bank)
    assert [proj[0].in_features for proj in concat.decoder.input_proj] == [512, 1024]


def test_bf16_autocast_and_channels_last(data):
    images, labels, cooccurrence, embeddings, bank = data
    model = build_model(_cfg(), NUM_CLASSES, embeddings, cooccurrence, bank).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(images.contiguous(memory_format=torch.channels_last))
    assert output.clue_state.assignments[0].dtype == torch.float32  # MCC math stays fp32
    loss = model.loss(output, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    model.update_prototypes(output, labels)
    torch.testing.assert_close(model.clues.prototypes("layer3").norm(dim=1), torch.ones(bank.num_prototypes("layer3")))


@pytest.mark.parametrize(
    "overrides,inputs,message",
    [
        ({}, {"prototype_bank": None}, r"run the CPI step.*use_cpi: false"),
        ({}, {"label_embeddings": None}, r"label embeddings"),
        ({}, {"cooccurrence": None}, r"co-occurrence"),
        ({"use_cpi": False, "pki": {"use_gcn": False}}, {"cooccurrence": None}, r"class counts"),
        ({"backbone": {"arch": "resnet50"}}, {}, r"built with another backbone"),
        ({"backbone": {"stages": ["layer4"]}}, {}, r"stages"),
        ({}, {"cooccurrence": np.diag([3.0, 2.0, 2.0, 4.0, 1.0])}, r"label graph is empty"),
    ],
)
def test_missing_or_inconsistent_inputs_raise_clear_errors(overrides, inputs, message, data):
    _, _, cooccurrence, embeddings, bank = data
    kwargs = {"label_embeddings": embeddings, "cooccurrence": cooccurrence, "prototype_bank": bank} | inputs
    with pytest.raises(ValueError, match=message):
        build_model(_cfg(**overrides), NUM_CLASSES, **kwargs)
    with pytest.raises(ModelBuildError, match=r"label embeddings have shape"):
        build_model(_cfg(), NUM_CLASSES, embeddings[:3], cooccurrence, bank)


def test_trained_model_reloads_from_its_state_dict_alone(data):
    images, labels, cooccurrence, embeddings, bank = data
    for overrides in ({}, {"variant": "baseline"}, {"mcc": {"enabled": False}, "pki": {"use_gcn": False}}):
        cfg = _cfg(**overrides)
        model = build_model(cfg, NUM_CLASSES, embeddings, cooccurrence, bank)
        output = model(images)
        model.loss(output, labels).backward()
        model.update_prototypes(output, labels)
        restored = load_model_from_state_dict(cfg, NUM_CLASSES, model.state_dict())
        model.eval(), restored.eval()
        with torch.no_grad():
            torch.testing.assert_close(restored(images).logits, model(images).logits)
    mccl_state = build_model(_cfg(), NUM_CLASSES, embeddings, cooccurrence, bank).state_dict()
    with pytest.raises(ModelBuildError, match=r"does not match.*unexpected \['clues"):
        load_model_from_state_dict(_cfg(variant="baseline"), NUM_CLASSES, mccl_state)
    with pytest.raises(ModelBuildError, match=r"clues.prototypes_layer3"):
        load_model_from_state_dict(_cfg(pki={"use_gcn": False}), NUM_CLASSES, model.state_dict())  # no-MCC dict


@dataclasses.dataclass
class _NotATensor:
    x: int


def _resnet18(stages=("layer3", "layer4"), weights="none") -> Backbone:
    return Backbone(BackboneConfig(arch="resnet18", stages=stages, weights=str(weights)))


def test_local_backbone_weights_load_and_bad_files_fail(tmp_path):
    reference = torchvision.models.resnet18(weights=None)  # torchvision names load into the timm trunk
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = _resnet18(weights=path)
    assert torch.equal(backbone.trunk.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert backbone.weights_origin.startswith(f"file {path}")
    truncated = _resnet18(("layer2",), path)  # deeper stages dropped
    assert not hasattr(truncated.trunk, "layer3") and truncated.stage_channels == (128,)
    assert truncated.stage_strides == (8,)

    with pytest.raises(BackboneWeightsError, match="does not exist"):
        _resnet18(weights=tmp_path / "nope.pth")
    wrong_depth = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong_depth)
    with pytest.raises(BackboneWeightsError, match=r"resnet34\.pth.*missing"):
        _resnet18(weights=wrong_depth)
    pickled = tmp_path / "object.pth"
    torch.save({"model": _NotATensor(1)}, pickled)
    with pytest.raises(BackboneWeightsError, match=r"object\.pth.*weights_only"):
        _resnet18(weights=pickled)


def test_explain_matches_forward_and_decomposes_into_clues(data):
    images, labels, cooccurrence, embeddings, bank = data
    torch.manual_seed(0)
    model = build_model(_cfg(mcc={"residual": 0.5}), NUM_CLASSES, embeddings, cooccurrence, bank).eval()
    with torch.no_grad():
        logits = model(images).logits
    explanation = model.explain(images)
    torch.testing.assert_close(explanation.logits, logits)
    assert explanation.stages == ("layer3", "layer4") and explanation.grid_sizes == [(4, 4), (2, 2)]
    total = sum(m.sum(dim=(-2, -1)) for m in explanation.attention_maps())
    torch.testing.assert_close(total, torch.ones(6, NUM_CLASSES))
    class_maps = explanation.class_assignment_maps(NUM_CLASSES)
    for stage_map in class_maps:
        torch.testing.assert_close(stage_map.sum(dim=1), torch.ones(6, *stage_map.shape[2:]))
    clues = explanation.top_clues(image=0, intent=2, k=4)
    assert len(clues) == 4 and [c["mass"] for c in clues] == sorted((c["mass"] for c in clues), reverse=True)
    owners = {s: model.clues.owners(s) for s in model.clues.stages}
    for clue in clues:
        assert clue["prototype"] == f"{clue['stage']}:{clue['index']}"
        assert clue["owner"] == int(owners[clue["stage"]][clue["index"]])
    all_mass = sum(float(m[0, 2].sum()) for m in explanation.clue_mass())
    assert all_mass == pytest.approx(1.0, abs=1e-5)

    no_mcc = build_model(_cfg(mcc={"enabled": False}), NUM_CLASSES, embeddings, cooccurrence, None).eval()
    plain = no_mcc.explain(images)
    assert plain.assignments is None and plain.class_assignment_maps(NUM_CLASSES) is None
    assert plain.top_clues(0, 0) == []


def test_stage_gate_weights_are_reported(data):
    images, labels, cooccurrence, embeddings, bank = data
    gated = build_model(_cfg(pki={"stage_gate": "sigmoid"}), NUM_CLASSES, embeddings, cooccurrence, bank)
    assert gated.stage_gate_weights() == {"layer3": 1.0, "layer4": 1.0}
    assert build_model(_cfg(), NUM_CLASSES, embeddings, cooccurrence, bank).stage_gate_weights() == {}
    with pytest.raises(ConfigError, match="stage_gate"):
        _cfg(pki={"stage_gate": "relu"})
    with pytest.raises(ConfigError, match="label_text"):
        _cfg(pki={"label_text": "emoji"})
