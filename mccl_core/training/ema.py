"""Exponential moving average of model weights, with an explicit warm-up.

Parameters are averaged. MCC's prototypes (buffers named ``prototypes_<stage>``) are averaged too
and re-normalised to unit length: the EMA backbone is an average of the live backbones, so its
token space is matched by the average of the live prototypes, not by the live model's latest ones.
Other buffers (BatchNorm statistics, prototype owners, MCC's health counters) are copied.

Warm-up, explicit: the averaging horizon ``h = 1 / (1 - decay)`` starts at 1 step and grows by
``horizon_growth`` steps per update, ``h_n = 1 + horizon_growth * (n + 1)``, until it reaches the
stated decay's horizon; from then on the stated decay is in force. ``horizon_growth = 1/9`` is
timm's ``(1 + n) / (10 + n)`` cap (the EMA covers about the last ninth of the steps so far), which
suits any run length, but reaches 0.9997 only after about 30k steps: a 6k-step run never had the
decay it stated. ``horizon_growth = 1`` averages every step so far (Polyak) until the stated
horizon, which 0.9997 reaches after 3,333 steps. The loop logs the decay in effect every epoch.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

#: Buffers averaged like parameters (then unit-normalised per row): MCC's prototypes.
PROTOTYPE_BUFFER_PREFIX = "prototypes_"


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, horizon_growth: float = 1 / 9) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if horizon_growth <= 0:
            raise ValueError(f"EMA warm-up horizon growth must be > 0, got {horizon_growth}")
        self.decay = decay
        self.horizon_growth = float(horizon_growth)
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses (the stated one once the warm-up is over)."""
        return self.decay_at(self.num_updates)

    def decay_at(self, update: int) -> float:
        """The decay of update ``update`` (0-based)."""
        return min(self.decay, 1.0 - 1.0 / (1.0 + self.horizon_growth * (update + 1)))

    def steps_to_stated_decay(self) -> int:
        """Updates before the stated decay is in force (the warm-up's length)."""
        return max(0, math.ceil((1.0 / (1.0 - self.decay) - 1.0) / self.horizon_growth - 1.0))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        # lerp_(live, w): ema += w * (live - ema), i.e. ema = decay * ema + (1 - decay) * live.
        # One public op per tensor (torch's _foreach_ batch is private API; the model has ~100).
        for ema_param, live_param in zip(self.module.parameters(), model.parameters()):
            ema_param.lerp_(live_param.detach(), 1.0 - decay)
        for (name, ema_buf), live_buf in zip(self.module.named_buffers(), model.buffers()):
            if name.rsplit(".", 1)[-1].startswith(PROTOTYPE_BUFFER_PREFIX):
                ema_buf.lerp_(live_buf, 1.0 - decay)
                ema_buf.copy_(nn.functional.normalize(ema_buf, dim=-1))
            else:
                ema_buf.copy_(live_buf)

    def state_dict(self) -> dict:
        return {
            "module": self.module.state_dict(),
            "num_updates": self.num_updates,
            "decay": self.decay,
            "horizon_growth": self.horizon_growth,
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
        self.horizon_growth = float(state.get("horizon_growth", self.horizon_growth))
