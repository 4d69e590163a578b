"""CPI: frequency-aware allocation, spherical k-means, the streaming builder, PrototypeBank files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mccl_core.models import (
    CPIConfig,
    PrototypeBank,
    PrototypeBankBuilder,
    PrototypeBankError,
    allocate_prototypes,
    build_prototype_bank,
    format_allocation_table,
    random_prototype_bank,
    spherical_kmeans,
)

FIXTURES = Path(__file__).parent / "fixtures" / "models"


def test_allocation_formula_without_clipping():
    # weights 1/100 : 1/200 : 1/400 of K_total = 8 * 3 = 24 -> 13.7, 6.9, 3.4
    rows = allocate_prototypes([100, 200, 400], CPIConfig())
    assert [r.prototypes for r in rows] == [14, 7, 3]
    assert [r.count for r in rows] == [100, 200, 400]


def test_allocation_clips_to_k_min_and_k_max():
    # K_total = 32: raw 31.1 for the rare class (clipped to k_max=16), 0.31 for the others (-> k_min=2)
    rows = allocate_prototypes([1, 100, 100, 100], CPIConfig(k_max=16))
    assert [r.prototypes for r in rows] == [16, 2, 2, 2]
    uniform = allocate_prototypes([1, 100, 100, 100], CPIConfig(exponent=0.0))
    assert [r.prototypes for r in uniform] == [8, 8, 8, 8]


def test_allocation_on_intentonomy_counts_favours_rare_classes():
    counts = np.diag(np.load(FIXTURES / "intentonomy_train_cooccurrence_counts.npy"))
    rows = allocate_prototypes(counts, CPIConfig())
    k = np.array([r.prototypes for r in rows])
    # Rarest class InspirOthrs (145 images, id 17): raw 33.6 -> clipped to 32;
    # commonest NatBeauty (2375, id 19) -> 2.
    assert counts[17] == 145 and k[17] == 32
    assert counts[19] == 2375 and k[19] == 2
    assert k.sum() == 223
    order = np.argsort(counts)
    assert np.all(np.diff(k[order]) <= 0), "rarer classes must never get fewer prototypes"
    table = format_allocation_table(rows)
    assert "total prototypes: 223" in table and "145" in table


def test_allocation_rejects_class_without_images():
    with pytest.raises(PrototypeBankError, match=r"1 \(b\)"):
        allocate_prototypes([3, 0], CPIConfig(), ["a", "b"])


def test_spherical_kmeans_recovers_planted_clusters():
    g = torch.Generator().manual_seed(3)
    centers = F.normalize(torch.randn(4, 32, generator=g), dim=1)
    truth = torch.arange(4).repeat_interleave(50)
    points = F.normalize(centers[truth] + 0.1 * torch.randn(200, 32, generator=g), dim=1)
    result = spherical_kmeans(points, 4, seed=0)
    cos = result.centroids @ centers.T
    match = cos.argmax(dim=1)
    assert sorted(match.tolist()) == [0, 1, 2, 3]
    assert cos.max(dim=1).values.min() > 0.98
    assert torch.equal(match[result.labels], truth)  # every point in its planted cluster
    torch.testing.assert_close(result.centroids.norm(dim=1), torch.ones(4))
    again = spherical_kmeans(points, 4, seed=0)
    assert torch.equal(again.centroids, result.centroids)  # deterministic for a seed


def test_spherical_kmeans_with_duplicate_points_returns_k_centroids():
    points = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=1)
    result = spherical_kmeans(points, 3, seed=1)
    assert result.centroids.shape == (3, 2) and torch.isfinite(result.centroids).all()
    with pytest.raises(ValueError, match="k=5"):
        spherical_kmeans(points, 5)


def _planted_tokens(num_images: int = 12, patches: int = 9, channels: int = 16):
    """Class c's images contain tokens near one of two class-specific directions (+ noise)."""
    g = torch.Generator().manual_seed(0)
    directions = F.normalize(torch.randn(3, 2, channels, generator=g), dim=-1)
    labels = torch.zeros(num_images, 3)
    tokens = torch.zeros(num_images, patches, channels)
    for i in range(num_images):
        c = i % 3
        labels[i, c] = 1
        which = torch.randint(0, 2, (patches,), generator=g)
        tokens[i] = directions[c, which] + 0.05 * torch.randn(patches, channels, generator=g)
    return tokens, labels, directions


def test_build_prototype_bank_finds_class_clues():
    tokens, labels, directions = _planted_tokens()
    cfg = CPIConfig(prototypes_per_class=2.0, k_min=2, k_max=2)
    bank = build_prototype_bank({"layer4": tokens * 7.0}, labels, cfg, class_names=["a", "b", "c"])
    assert bank.stages == ("layer4",) and bank.num_classes == 3
    assert bank.owners["layer4"].tolist() == [0, 0, 1, 1, 2, 2]
    protos = bank.prototypes["layer4"]
    for c in range(3):
        own = protos[bank.owners["layer4"] == c]
        cos = own @ directions[c].T  # each of the class's prototypes sits on one of its directions
        assert sorted(cos.argmax(dim=1).tolist()) == [0, 1]
        assert cos.max(dim=1).values.min() > 0.99
    assert bank.metadata["source"] == "cpi" and bank.metadata["patches_per_class"]["layer4"] == [36, 36, 36]


def test_builder_subsample_is_independent_of_batching():
    tokens, labels, _ = _planted_tokens(num_images=30)
    maps = tokens.transpose(1, 2).reshape(30, 16, 3, 3)  # [B, C, H, W] layout
    cfg = CPIConfig(max_patches_per_class=25, k_min=2, k_max=3)
    one_shot = build_prototype_bank({"layer3": maps}, labels, cfg)
    builder = PrototypeBankBuilder(3, ["layer3"], cfg)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    for chunk in perm.split(7):  # shuffled, uneven batches with their dataset indices
        builder.add([maps[chunk]], labels[chunk], chunk)
    streamed = builder.build()
    assert streamed.metadata["patches_per_class"]["layer3"] == [25, 25, 25]
    assert torch.equal(streamed.prototypes["layer3"], one_shot.prototypes["layer3"])
    # the flat (tokens, image_index) layout of the feature-extraction step gives the same bank
    flat = {"layer3": (tokens.reshape(-1, 16).numpy(), np.repeat(np.arange(30), 9))}
    from_flat = build_prototype_bank(flat, labels.numpy(), cfg)
    assert torch.equal(from_flat.prototypes["layer3"], one_shot.prototypes["layer3"])
    with pytest.raises(PrototypeBankError, match="added twice"):
        builder.add([maps[:2]], labels[:2], [0, 1])


def test_class_with_fewer_patches_than_k_gets_reduced_k(caplog):
    tokens, labels, _ = _planted_tokens(num_images=6, patches=2)
    labels[:, 2] = 0
    labels[0, 2] = 1  # class 2: one image -> 2 patches; counts (2, 2, 1) -> K = (3, 3, 6)
    cfg = CPIConfig(prototypes_per_class=4.0, k_max=8)
    with caplog.at_level(logging.WARNING, logger="mccl_core.models.cpi"):
        bank = build_prototype_bank({"layer4": tokens}, labels, cfg)
    assert [r.prototypes for r in bank.allocation] == [3, 3, 6]
    assert int((bank.owners["layer4"] == 2).sum()) == 2
    assert bank.metadata["reduced"] == [{"stage": "layer4", "class_id": 2, "allocated": 6, "used": 2}]
    assert "only 2 patches" in caplog.text


def test_bank_save_load_roundtrip(tmp_path):
    tokens, labels, _ = _planted_tokens()
    bank = build_prototype_bank({"layer3": tokens, "layer4": tokens[..., :8]}, labels, CPIConfig(k_min=2, k_max=3))
    path = bank.save(tmp_path / "bank" / "prototypes.safetensors")
    loaded = PrototypeBank.load(path)
    assert loaded.stages == bank.stages and loaded.allocation == bank.allocation
    assert loaded.metadata == bank.metadata and loaded.stage_channels == (16, 8)
    for s in bank.stages:
        assert torch.equal(loaded.prototypes[s], bank.prototypes[s])
        assert torch.equal(loaded.owners[s], bank.owners[s])


def test_bank_load_errors_name_the_file(tmp_path):
    with pytest.raises(PrototypeBankError, match="does not exist"):
        PrototypeBank.load(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(PrototypeBankError, match="garbage.safetensors"):
        PrototypeBank.load(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    with pytest.raises(PrototypeBankError, match="header"):
        PrototypeBank.load(foreign)


def test_random_bank_uses_the_same_allocation_and_unit_vectors():
    bank = random_prototype_bank({"layer3": 16, "layer4": 32}, [100, 200, 400], CPIConfig())
    assert bank.metadata["source"] == "random"
    assert bank.owners["layer3"].bincount().tolist() == [14, 7, 3]
    torch.testing.assert_close(bank.prototypes["layer4"].norm(dim=1), torch.ones(24))
    same = random_prototype_bank({"layer3": 16, "layer4": 32}, [100, 200, 400], CPIConfig())
    assert torch.equal(same.prototypes["layer3"], bank.prototypes["layer3"])


def test_invalid_bank_is_rejected():
    bank = random_prototype_bank({"layer4": 4}, [5, 5], CPIConfig(k_min=1, k_max=2))
    with pytest.raises(PrototypeBankError, match="unit norm"):
        PrototypeBank(bank.stages, {"layer4": bank.prototypes["layer4"] * 2}, bank.owners, bank.allocation, 2)
    with pytest.raises(PrototypeBankError, match="own no prototype"):
        PrototypeBank(
            bank.stages, bank.prototypes, {"layer4": torch.zeros_like(bank.owners["layer4"])}, bank.allocation, 2
        )
