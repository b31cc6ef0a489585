"""Exponential moving averages of a model's weights: what a fine-tune on a few real pairs keeps as its result."""

from __future__ import annotations

import copy
from typing import TypeVar

import torch

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


class EMA:
    """Exponential moving averages of a model's weights, one per decay, all updated after every step."""

    def __init__(self, model: torch.nn.Module, decays: list[float]) -> None:
        self.decays = list(decays)
        self.states = [{k: v.detach().clone() for k, v in model.state_dict().items()} for _ in self.decays]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        current = model.state_dict()
        for decay, state in zip(self.decays, self.states, strict=True):
            for key, value in state.items():
                if value.is_floating_point():
                    value.lerp_(current[key].detach(), 1 - decay)
                else:
                    value.copy_(current[key])

    def model(self, model: ModuleT, index: int = 0) -> ModuleT:
        """A copy of `model` holding EMA number `index` (in eval mode)."""
        averaged = copy.deepcopy(model)
        averaged.load_state_dict(self.states[index])
        return averaged.eval()

    def state_dict(self) -> list[dict[str, torch.Tensor]]:
        return self.states

    def load_state_dict(self, states: list[dict[str, torch.Tensor]]) -> None:
        if len(states) != len(self.states):
            raise ValueError(f"the checkpoint has {len(states)} EMAs, --ema asks for {len(self.states)}")
        for own, saved in zip(self.states, states, strict=True):
            for key in own:
                own[key].copy_(saved[key])
