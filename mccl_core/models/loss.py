"""Multi-label losses with an explicit reduction.

Reduction convention (both losses): per-element losses ``[B, C]`` are summed over classes, then
``"mean"`` averages these per-sample sums over the batch, ``"sum"`` sums them (what the ASL
reference code returns), ``"none"`` returns the ``[B, C]`` elements. "mean" keeps the gradient
scale independent of the batch size; it still scales with the number of classes, which is why the
choice couples to the learning rate. Under DDP each rank averages over its own batch and DDP
averages gradients across ranks, i.e. the global mean of per-sample sums.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Reduction = Literal["mean", "sum", "none"]


def _reduce(elements: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return elements
    per_sample = elements.sum(dim=1)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    raise ValueError(f"reduction={reduction!r}: must be 'mean', 'sum' or 'none'")


def _check(logits: Tensor, targets: Tensor) -> None:
    if logits.ndim != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"multi-label loss expects logits and targets of equal shape [B, C], got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (Ridnik et al., ICCV 2021) for multi-label classification.

    With p = sigmoid(z) and the shifted negative probability p_m = max(p - clip, 0):

        L = -sum_c [ y (1-p)^gamma_pos log p + (1-y) p_m^gamma_neg log(1 - p_m) ]

    Down-weights easy negatives (gamma_neg > gamma_pos) and discards very easy ones (clip), which
    matters under Intentonomy's ~1.9 positives out of 28 classes. Computed in float32 (safe under
    bf16 autocast); log p uses ``logsigmoid`` and log(1 - p_m) is clamped at ``eps``. With
    ``gamma_neg = gamma_pos = clip = 0`` it equals BCE-with-logits summed over classes.
    Soft targets in [0, 1] are accepted.
    """

    def __init__(
        self,
        gamma_neg: float = 2.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction={reduction!r}: must be 'mean', 'sum' or 'none'")
        self.gamma_neg = float(gamma_neg)
        self.gamma_pos = float(gamma_pos)
        self.clip = float(clip)
        self.eps = float(eps)
        self.reduction: Reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check(logits, targets)
        z = logits.float()
        y = targets.float()
        prob = torch.sigmoid(z)
        log_p = F.logsigmoid(z)
        if self.clip > 0:
            one_minus_pm = (1.0 - prob + self.clip).clamp(max=1.0)  # 1 - max(p - clip, 0)
            log_one_minus_pm = torch.log(one_minus_pm.clamp(min=self.eps))
        else:
            one_minus_pm = 1.0 - prob
            log_one_minus_pm = F.logsigmoid(-z)
        loss_pos = y * log_p
        loss_neg = (1.0 - y) * log_one_minus_pm
        # Focusing weights; skipped for gamma == 0 so pow(0, 0) has no NaN gradient at p == 1.
        if self.gamma_pos != 0:
            loss_pos = loss_pos * (1.0 - prob).pow(self.gamma_pos)
        if self.gamma_neg != 0:
            loss_neg = loss_neg * (1.0 - one_minus_pm).pow(self.gamma_neg)
        return _reduce(-(loss_pos + loss_neg), self.reduction)

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, "
            f"eps={self.eps}, reduction={self.reduction!r}"
        )


class MultiLabelBCELoss(nn.Module):
    """BCE-with-logits with the same reduction convention as :class:`AsymmetricLoss` (baseline)."""

    def __init__(self, reduction: Reduction = "mean") -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction={reduction!r}: must be 'mean', 'sum' or 'none'")
        self.reduction: Reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        _check(logits, targets)
        elements = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
        return _reduce(elements, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
