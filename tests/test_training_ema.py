"""The weight EMA: an explicit warm-up that can reach the stated decay, and averaged prototypes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mccl_core.training.ema import ModelEMA


class _WithPrototypes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("prototypes_stage4", nn.functional.normalize(torch.randn(3, 4), dim=-1))


def test_default_warm_up_is_timms_and_the_paper_profiles_reaches_the_stated_decay():
    """The paper's 0.9997 over ~6k steps: timm's (1+n)/(10+n) (growth 1/9) never passes ~0.9985;
    growth 1 (the paper profile) has the stated decay in force from step 3,333 on."""
    timm = ModelEMA(nn.Linear(2, 2), 0.9997)
    for n in (0, 10, 500, 5999):
        assert timm.decay_at(n) == pytest.approx((1 + n) / (10 + n), abs=1e-12)
    assert timm.decay_at(5999) < 0.9986 and timm.steps_to_stated_decay() > 6000
    polyak = ModelEMA(nn.Linear(2, 2), 0.9997, horizon_growth=1.0)
    reached = polyak.steps_to_stated_decay()
    assert 3300 < reached < 3340
    assert polyak.decay_at(reached - 1) < 0.9997 == polyak.decay_at(reached) == polyak.decay_at(5999)
    assert polyak.decay_at(0) == 0.5 and polyak.decay_at(99) == pytest.approx(1 - 1 / 101)  # horizon n + 1
    polyak.num_updates = 100
    assert polyak.current_decay() == polyak.decay_at(100)
    with pytest.raises(ValueError, match="horizon growth"):
        ModelEMA(nn.Linear(2, 2), 0.99, horizon_growth=0.0)


def test_prototypes_are_averaged_and_renormalised_other_buffers_copied():
    torch.manual_seed(0)
    live = _WithPrototypes()
    ema = ModelEMA(live, 0.9, horizon_growth=100.0)  # the stated decay from the first update
    start = ema.module.prototypes_stage4.clone()
    live.prototypes_stage4.copy_(nn.functional.normalize(torch.randn(3, 4), dim=-1))
    live.bn.running_mean.fill_(5.0)
    ema.update(live)
    expected = nn.functional.normalize(0.9 * start + 0.1 * live.prototypes_stage4, dim=-1)
    torch.testing.assert_close(ema.module.prototypes_stage4, expected)
    torch.testing.assert_close(ema.module.prototypes_stage4.norm(dim=-1), torch.ones(3))
    assert torch.equal(ema.module.bn.running_mean, live.bn.running_mean)  # statistics: copied
    again = ModelEMA(_WithPrototypes(), 0.5)
    again.load_state_dict(ema.state_dict())
    assert (again.decay, again.horizon_growth, again.num_updates) == (0.9, 100.0, 1)


def test_epoch_records_carry_the_decay_in_effect():
    from mccl_core.training.config import TrainConfig
    from mccl_core.training.loop import EpochRecord

    record = EpochRecord(epoch=0, train_loss=1.0, lr=0.1, seconds=1.0, images_per_second=1.0, ema_decay=0.95)
    assert record.metrics()["ema_decay"] == 0.95
    assert "ema_decay" not in EpochRecord(0, 1.0, 0.1, 1.0, 1.0).metrics()
    with pytest.raises(ValueError, match="ema_horizon_growth"):
        TrainConfig(ema_horizon_growth=0.0)
