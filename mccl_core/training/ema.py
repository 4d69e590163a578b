"""Exponential moving average of model weights.

Parameters are averaged; buffers (BatchNorm statistics, MCC prototypes) are copied from the live
model, because the prototypes already follow their own momentum rule and must stay unit-norm.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        # Warm-up (as in timm/Q2L): short runs would otherwise report the random initialisation.
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        ema_params: list[torch.Tensor] = list(self.module.parameters())
        live_params = [p.detach() for p in model.parameters()]
        # lerp_(live, w): ema += w * (live - ema), i.e. ema = decay * ema + (1 - decay) * live.
        torch._foreach_lerp_(ema_params, live_params, 1.0 - decay)
        for ema_buf, live_buf in zip(self.module.buffers(), model.buffers()):
            ema_buf.copy_(live_buf)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
