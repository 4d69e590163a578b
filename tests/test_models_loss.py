"""Asymmetric loss vs. its direct formula, BCE equivalence, reductions, numerical safety."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mccl_core.models import AsymmetricLoss, LossConfig, ModelConfig, MultiLabelBCELoss, build_loss


def _direct_asl(logits: np.ndarray, y: np.ndarray, gamma_neg: float, gamma_pos: float, clip: float) -> np.ndarray:
    """Element-wise ASL in float64 straight from the formula in docs/model.md."""
    p = 1.0 / (1.0 + np.exp(-logits))
    p_m = np.maximum(p - clip, 0.0)
    return -(y * (1 - p) ** gamma_pos * np.log(p) + (1 - y) * p_m**gamma_neg * np.log(1 - p_m))


@pytest.fixture()
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 9, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(6, 9, generator=g) < 0.3).double()
    targets[0, 0] = 1.0
    return logits, targets


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(2.0, 0.0, 0.05), (4.0, 1.0, 0.05), (2.0, 0.0, 0.0)])
def test_asl_matches_direct_formula(batch, gamma_neg, gamma_pos, clip):
    logits, targets = batch
    expected = _direct_asl(logits.numpy(), targets.numpy(), gamma_neg, gamma_pos, clip)
    loss = AsymmetricLoss(gamma_neg, gamma_pos, clip, reduction="none")
    elements = loss(logits, targets).double().numpy()
    np.testing.assert_allclose(elements, expected, rtol=1e-5, atol=1e-6)
    mean = AsymmetricLoss(gamma_neg, gamma_pos, clip, reduction="mean")(logits, targets)
    total = AsymmetricLoss(gamma_neg, gamma_pos, clip, reduction="sum")(logits, targets)
    # "mean" = batch mean of per-sample sums over classes; "sum" = total.
    assert mean.item() == pytest.approx(expected.sum(axis=1).mean(), rel=1e-5)
    assert total.item() == pytest.approx(expected.sum(), rel=1e-5)


def test_asl_without_focusing_or_clip_equals_bce(batch):
    logits, targets = batch
    asl = AsymmetricLoss(gamma_neg=0.0, gamma_pos=0.0, clip=0.0, reduction="sum")(logits, targets)
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="sum")
    assert asl.item() == pytest.approx(bce.item(), rel=1e-6)
    asl_mean = AsymmetricLoss(0.0, 0.0, 0.0, reduction="mean")(logits, targets)
    assert asl_mean.item() == pytest.approx(bce.item() / logits.shape[0], rel=1e-6)
    plain = MultiLabelBCELoss(reduction="mean")(logits, targets)
    assert plain.item() == pytest.approx(asl_mean.item(), rel=1e-6)


def test_asl_is_finite_for_saturated_logits_and_gradients():
    logits = torch.tensor([[200.0, -200.0, 30.0, -30.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    for loss_fn in (AsymmetricLoss(), AsymmetricLoss(0.0, 0.0, 0.0), AsymmetricLoss(4.0, 1.0, 0.05)):
        value = loss_fn(logits, targets)
        (grad,) = torch.autograd.grad(value, logits)
        assert torch.isfinite(value) and torch.isfinite(grad).all()
    # Confident wrong positive/negative dominate; confident correct ones contribute ~0.
    elements = AsymmetricLoss(reduction="none")(logits, targets)[0]
    assert elements[0] < 1e-6 and elements[1] < 1e-6
    assert elements[3] > 29.0


def test_clip_discards_easy_negatives():
    # p = sigmoid(-4) ~ 0.018 < clip 0.05 -> p_m = 0 -> zero negative loss.
    loss = AsymmetricLoss(gamma_neg=2.0, clip=0.05, reduction="none")
    assert loss(torch.tensor([[-4.0]]), torch.tensor([[0.0]])).item() == 0.0


def test_loss_shape_mismatch_and_bad_reduction_raise():
    with pytest.raises(ValueError, match="equal shape"):
        AsymmetricLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reduction"):
        AsymmetricLoss(reduction="avg")  # type: ignore[arg-type]


def test_build_loss_follows_variant():
    assert isinstance(build_loss(ModelConfig()), AsymmetricLoss)
    assert isinstance(build_loss(ModelConfig(variant="baseline")), MultiLabelBCELoss)
    assert isinstance(build_loss(ModelConfig(variant="baseline", loss=LossConfig(kind="asl"))), AsymmetricLoss)
    asl = build_loss(ModelConfig())
    assert (asl.gamma_neg, asl.gamma_pos, asl.clip) == (2.0, 0.0, 0.05)
