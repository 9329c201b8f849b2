"""Low-rank adapters (LoRA, Hu et al. 2021) on the attention and MLP weights of a HookedTransformer.

The paper post-trains its 7B models with LoRA; here any HookedTransformer gets W ← W + (α/r)·A·B on
W_Q, W_K, W_V, W_O (per layer, viewed as one d_model × (heads·d_head) matrix) and W_in, W_gate, W_out,
with the base weights frozen. Built on ``torch.nn.utils.parametrize`` rather than PEFT: TransformerLens keeps
its weights as bare Parameters of shape [head, d_model, d_head] (no ``nn.Linear`` for PEFT to wrap), and a
parametrisation leaves every TransformerLens code path (``attn.W_Q``, hooks, caches, the grouped-query
``W_K`` property) reading the adapted weight unchanged. B starts at zero, so the adapted model starts equal to
the base model; :func:`merge_lora` folds the adapters into plain weights (for saving in the usual format).
"""

from __future__ import annotations

import math

import einops
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from circuitry.errors import CircuitryError

# weight name -> einops pattern from the weight's shape to an (in, out) matrix; GQA keys/values are _W_K/_W_V
ATTN = {"W_Q": "h d e -> d (h e)", "W_K": "h d e -> d (h e)", "W_V": "h d e -> d (h e)", "_W_K": "h d e -> d (h e)",
        "_W_V": "h d e -> d (h e)", "W_O": "h e d -> (h e) d"}  # fmt: skip
MLP = {"W_in": "d m -> d m", "W_gate": "d m -> d m", "W_out": "m d -> m d"}
TARGETS = ("attn", "mlp")


class LoRADelta(nn.Module):
    """Parametrisation W ↦ W + (α/r) · rearrange(A @ B); A [in, r] ~ N(0, 1/in), B [r, out] = 0."""

    def __init__(self, shape: torch.Size, pattern: str, rank: int, alpha: float):
        super().__init__()
        lhs, rhs = pattern.split("->")
        self.inverse = f"{rhs.strip()} -> {lhs.strip()}"
        self.sizes = dict(zip(lhs.split(), shape))
        matrix = einops.rearrange(torch.empty(shape, device="meta"), pattern)
        n_in = matrix.shape[0]
        self.A = nn.Parameter(torch.randn(n_in, rank) / math.sqrt(n_in))
        self.B = nn.Parameter(torch.zeros(rank, matrix.shape[1]))
        self.scale = alpha / rank

    def forward(self, weight: Tensor) -> Tensor:
        delta = einops.rearrange((self.A @ self.B) * self.scale, self.inverse, **self.sizes)
        return weight + delta.to(weight.dtype)


def add_lora(model, rank: int, alpha: float | None = None, targets: tuple[str, ...] = TARGETS) -> list[nn.Parameter]:
    """Freeze every weight of ``model`` except attention gates and add rank-``rank`` adapters to the weights of
    ``targets`` (``attn``, ``mlp``) in every block; returns the adapter parameters. ``alpha`` defaults to
    ``rank`` (scale 1)."""
    if rank <= 0:
        raise CircuitryError(f"LoRA rank must be positive, got {rank}")
    if unknown := set(targets) - set(TARGETS):
        raise CircuitryError(f"unknown LoRA targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    if has_lora(model):
        raise CircuitryError("this model already has LoRA adapters; merge_lora(model) first")
    alpha = float(rank if alpha is None else alpha)
    for name, p in model.named_parameters():
        if not name.startswith("gates."):
            p.requires_grad_(False)
    device = next(model.parameters()).device
    adapters: list[nn.Parameter] = []
    for block in model.blocks:
        parts = [(block.attn, ATTN)] if "attn" in targets else []
        if "mlp" in targets and hasattr(block, "mlp"):
            parts.append((block.mlp, MLP))
        for module, names in parts:
            for wname, pattern in names.items():
                weight = module._parameters.get(wname)
                if weight is None:
                    continue
                delta = LoRADelta(weight.shape, pattern, rank, alpha).to(device)
                parametrize.register_parametrization(module, wname, delta)
                adapters += [delta.A, delta.B]
    if not adapters:
        raise CircuitryError(f"no {'/'.join(targets)} weights found to adapt in this model")
    return adapters


def has_lora(model) -> bool:
    return any(parametrize.is_parametrized(m) for m in model.modules())


def merge_lora(model) -> None:
    """Fold every adapter into its weight (W + ΔW becomes a plain Parameter) and unfreeze all weights."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for wname in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, wname, leave_parametrized=True)
    for p in model.parameters():
        p.requires_grad_(True)


def lora_target_of(param_name: str) -> str | None:
    """``blocks.0.attn.parametrizations.W_Q.0.A`` -> ``W_Q``; None for a parameter that is not an adapter."""
    parts = param_name.split(".")
    if "parametrizations" in parts and parts[-1] in ("A", "B"):
        return parts[parts.index("parametrizations") + 1]
    return None
