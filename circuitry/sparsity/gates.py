"""Input-dependent sparsity gates on every attention head (arXiv 2512.05865, Draye et al.).

Gate logit per head h, query i, key j <= i:  g_ij = s_ij + b_h, with s_ij the ordinary scaled
pre-softmax score (``hook_attn_scores``) and b_h a per-head bias. The pattern at ``hook_pattern``
is multiplied by the gate z_ij:

- ``train``: z = 1[g + eps > 0], eps ~ Logistic(0, 1), with the straight-through gradient of
  sigmoid(g + eps) (hard forward, soft backward);
- ``eval``: z = 1[g > 0] (deterministic);
- ``off``: z = 1 (the hooks only record gate logits, e.g. to measure connectivity).

No renormalisation after gating unless ``renormalise=True`` (rows may then sum to < 1).
TransformerLens fills causal-masked scores with -inf. The gate logits keep those -inf entries (the
gate is shut there); they are only added to, never multiplied, and the straight-through gradient
sigmoid'(-inf) is 0, so every gradient stays finite (tested).
"""

from __future__ import annotations

import copy
import functools
import math
from contextlib import contextmanager
from typing import Iterator, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from circuitry.errors import CircuitryError

GateMode = Literal["train", "eval", "off"]
MODES = ("train", "eval", "off")


class AttentionGates(nn.Module):
    """The gate parameters (one bias per layer and head) and the hooks that apply them.

    Attach with :func:`attach_gates`; it registers this module as ``model.gates`` so the biases
    train with the model and save with its state dict.
    """

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        bias_init: float = 2.0,
        learn_bias: bool = True,
        mode: GateMode = "eval",
        renormalise: bool = False,
    ):
        super().__init__()
        self.bias = nn.Parameter(torch.full((n_layers, n_heads), float(bias_init)), requires_grad=learn_bias)
        self.mode: GateMode = mode
        self.renormalise = renormalise
        # gate logits of the last forward per layer (-inf where causally masked), read for connectivity; only
        # train mode keeps their autograd graph (the regulariser needs it), so scoring a gated model with
        # gradients leaves no graph behind on the model (which would also make copy.deepcopy fail)
        self.last_logits: dict[int, Float[Tensor, "batch head q k"]] = {}
        # (rank, world) under torchrun: train-mode noise is drawn for the global batch and sliced, so N
        # processes gate exactly like one process with the same global batch
        self.shard: tuple[int, int] = (0, 1)
        self._handles: list[tuple[object, object]] = []

    def set_mode(self, mode: GateMode) -> "AttentionGates":
        if mode not in MODES:
            raise CircuitryError(f"unknown gate mode {mode!r}; choose from {', '.join(MODES)}")
        self.mode = mode
        return self

    def gate_logits(self, scores: Float[Tensor, "batch head q k"], layer: int) -> Float[Tensor, "batch head q k"]:
        """score + per-head bias. Masked entries stay -inf (gate always shut): they are only ever
        added to, never multiplied, and sigmoid'(-inf) = 0, so every gradient stays finite."""
        return scores + self.bias[layer].to(scores.dtype)[None, :, None, None]

    def gate_values(self, logits: Float[Tensor, "batch head q k"]) -> Float[Tensor, "batch head q k"]:
        if self.mode == "train":
            return _NoisyGatedPattern.apply(torch.ones_like(logits), logits, uniform_noise(logits, self.shard))
        if self.mode == "eval":
            return torch.gt(logits, 0, out=torch.empty_like(logits))
        return torch.isfinite(logits).to(logits.dtype)

    def apply_gates(self, pattern: Float[Tensor, "batch head q k"], logits: Float[Tensor, "batch head q k"]) -> Float[Tensor, "batch head q k"]:
        """pattern × gate. In train mode one fused autograd function (noise, threshold, product and the
        straight-through backward in a few passes), since these B·H·T² tensors are as large as the matmuls."""
        if self.mode == "train":
            return _NoisyGatedPattern.apply(pattern, logits, uniform_noise(logits, self.shard))
        return pattern * self.gate_values(logits)

    def _scores_hook(self, scores: Tensor, hook, layer: int) -> None:
        logits = self.gate_logits(scores, layer)
        self.last_logits[layer] = logits if self.mode == "train" else logits.detach()

    def _pattern_hook(self, pattern: Tensor, hook, layer: int) -> Tensor | None:
        logits = self.last_logits[layer]
        if self.mode == "off":
            return None
        out = self.apply_gates(pattern, logits)
        if self.renormalise:
            out = out / out.sum(-1, keepdim=True).clamp_min(1e-9)
        return out


def check_dense(model) -> None:
    """Gates go on a model without gates (attaching twice would gate every pattern twice)."""
    if getattr(model, "gates", None) is not None:
        raise CircuitryError("this model already has gates attached; detach_gates(model) first")


def attach_gates(
    model,
    bias_init: float = 2.0,
    mode: GateMode = "eval",
    renormalise: bool = False,
    learn_bias: bool = True,
    gates: AttentionGates | None = None,
) -> AttentionGates:
    """Put gates on every attention layer of a HookedTransformer (``model.gates``); returns them.

    Works on any HookedTransformer: the hooks only read ``hook_attn_scores`` and scale
    ``hook_pattern``, whose shapes are [batch, head, query, key] for every attention variant.
    """
    check_dense(model)
    cfg = model.cfg
    if gates is None:
        if not math.isfinite(bias_init):
            raise CircuitryError(f"bias_init must be a finite number, got {bias_init}")
        gates = AttentionGates(cfg.n_layers, cfg.n_heads, bias_init, learn_bias, mode, renormalise)
    elif tuple(gates.bias.shape) != (cfg.n_layers, cfg.n_heads):
        raise CircuitryError(f"gates are for {tuple(gates.bias.shape)} (layers, heads); model has {(cfg.n_layers, cfg.n_heads)}")
    gates.set_mode(mode)
    gates.to(next(model.parameters()).device)
    for layer, block in enumerate(model.blocks):
        for point, fn in ((block.attn.hook_attn_scores, gates._scores_hook), (block.attn.hook_pattern, gates._pattern_hook)):
            point.add_hook(_bind(fn, layer), is_permanent=True)
            gates._handles.append((point, point.fwd_hooks[-1]))
    model.gates = gates  # registers the biases as model parameters
    model.__dict__["__deepcopy__"] = functools.partial(_deepcopy_gated, model)  # copy.deepcopy looks it up on the instance
    return gates


def _deepcopy_gated(model, memo: dict):
    """``copy.deepcopy`` of a gated model. TransformerLens keeps hooks as closures, which deepcopy shares instead of
    copying, so a plain copy would still run the original's gates: the copy is made without the hooks, then gated
    again with a copy of the gates (the original gets its own gates object back)."""
    gates = detach_gates(model)
    try:
        twin, twin_gates = copy.deepcopy(model, memo), copy.deepcopy(gates, memo)  # (while the gates hold no hook handles)
    finally:
        attach_gates(model, mode=gates.mode, gates=gates)
    attach_gates(twin, mode=gates.mode, gates=twin_gates)
    return twin


@contextmanager
def gate_mode(model, mode: GateMode = "eval") -> Iterator[None]:
    """Run ``model``'s gates in ``mode`` (default: deterministic) inside the block, then restore their mode; a model
    without gates is left as it is."""
    gates = getattr(model, "gates", None)
    before = gates.mode if gates is not None else None
    if gates is not None:
        gates.set_mode(mode)
    try:
        yield
    finally:
        if gates is not None:
            gates.set_mode(before)


def detach_gates(model) -> AttentionGates | None:
    """Remove the gate hooks and the ``gates`` submodule; the model is dense again, bit for bit."""
    gates = getattr(model, "gates", None)
    if gates is None:
        return None
    for point, handle in gates._handles:
        handle.hook.remove()
        point.fwd_hooks.remove(handle)
    gates._handles.clear()
    gates.last_logits.clear()
    del model.gates
    model.__dict__.pop("__deepcopy__", None)
    return gates


class _NoisyGatedPattern(torch.autograd.Function):
    """pattern · 1[g + logit(u) > 0] with the straight-through gradient of sigmoid(g + logit(u)) for g.
    Equal to pattern × (hard gate 1[g + logit(u) > 0] with sigmoid's gradient), built from separate ops (the
    reference in tests/test_gates.py), in fewer passes; ``u`` is
    consumed (overwritten in place)."""

    @staticmethod
    def forward(ctx, pattern: Tensor, logits: Tensor, u: Tensor) -> Tensor:
        noisy = u.logit_(eps=1e-6).add_(logits)  # in place: u is a fresh buffer
        # a float 0/1 gate written by gt(out=...): on CPU this is several times faster than a bool mask
        # followed by masked_fill / where / a bool-float product
        gate = torch.gt(noisy, 0, out=torch.empty_like(noisy))
        ctx.save_for_backward(pattern, noisy, gate)
        return pattern * gate

    @staticmethod
    def backward(ctx, grad: Tensor):
        pattern, noisy, gate = ctx.saved_tensors
        grad_pattern = grad * gate if ctx.needs_input_grad[0] else None
        s = torch.sigmoid(noisy)
        grad_logits = s.addcmul_(s, s, value=-1.0).mul_(grad).mul_(pattern)  # σ'(noisy) · grad · pattern
        return grad_pattern, grad_logits, None


def uniform_noise(like: Tensor, shard: tuple[int, int] = (0, 1)) -> Tensor:
    """U(0, 1) noise shaped like ``like`` with 16-bit resolution: u = (k + 0.5) / 2¹⁶, k uniform on 0..65535.

    Drawn as raw 64-bit words from numpy's PCG64 (seeded from torch's RNG, so it is reproducible under
    torch.manual_seed and resumable from checkpoints, which store torch's RNG state) and split into four 16-bit
    integers: about 3x faster than ``torch.rand`` on CPU, where noise generation was the largest part of the
    gate overhead. The gate z = 1[g + logit(u) > 0] then fires with probability σ(g) up to 2⁻¹⁶.
    ``shard = (rank, world)``: draw for ``world`` times the batch and keep this rank's rows."""
    rank, world = shard
    shape = (like.shape[0] * world, *like.shape[1:])
    dtype = torch.promote_types(like.dtype, torch.float32)  # never bf16/fp16: logit(u) must stay finite
    if like.device.type != "cpu":
        return torch.rand(shape, dtype=dtype, device=like.device)[rank * like.shape[0] : (rank + 1) * like.shape[0]]
    seed = int(torch.randint(0, 2**62, (1,)).item())
    n = like.numel()
    words = np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw((n * world + 3) // 4)
    k = torch.from_numpy(words.view(np.int16)[rank * n : (rank + 1) * n]).view(like.shape)
    return k.to(dtype).add_(32768.5).mul_(1.0 / 65536)


def _bind(fn, layer: int):
    """A hook ``fn(tensor, hook)`` with the layer index bound (TransformerLens passes ``hook=``)."""

    def hook_fn(tensor, hook):
        return fn(tensor, hook, layer)

    hook_fn.__name__ = f"gate_{fn.__name__}_L{layer}"
    return hook_fn
