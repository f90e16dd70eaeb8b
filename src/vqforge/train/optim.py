"""Optimizer parameter groups (weight decay only where it belongs) and loading optimizer states across layouts."""

from __future__ import annotations

import copy

import torch
from torch import nn


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups: weight decay only on weight matrices and kernels (rank >= 2) outside quantizers.

    Codebooks would shrink towards 0 (collapse), and biases, norm scales and ReZero gains are not weights to
    regularise; they form a group with weight_decay 0. Frozen parameters are left out.
    """
    from ..quantizers.base import Quantizer

    in_quantizer = {id(p) for m in module.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in in_quantizer else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def load_optimizer_state(opt: torch.optim.Optimizer, saved: dict, params_in_module_order: list[torch.Tensor]) -> None:
    """Load `saved` into `opt`; a state saved with one group over `params_in_module_order` (checkpoints written before
    the decay groups) is re-indexed onto the current groups, keeping their hyper-parameters."""
    if len(saved.get("param_groups", [])) == len(opt.param_groups):
        opt.load_state_dict(saved)
        return
    old_ids = [i for g in saved["param_groups"] for i in g["params"]]
    if len(old_ids) != len(params_in_module_order):
        opt.load_state_dict(saved)  # torch's own error names the mismatch
        return
    position = {id(p): k for k, p in enumerate(params_in_module_order)}
    current = [p for g in opt.param_groups for p in g["params"]]
    state = {j: copy.copy(saved["state"][old_ids[position[id(p)]]]) for j, p in enumerate(current)
             if old_ids[position[id(p)]] in saved["state"]}
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
