"""Cross-layer transcoder (Ameisen et al. 2025): per-layer encoders, decoders to this and every later layer.

Layer ``l`` reads ``blocks.{l}.hook_resid_mid`` and its features write to ``blocks.{l'}.hook_mlp_out`` for every
``l' >= l``. With ``cross_layer=False`` each layer only writes to its own MLP output: a set of per-layer
transcoders (the baseline; exportable to SAELens ``JumpReLUTranscoder`` objects by :func:`to_sae_lens`).

Inputs and outputs are divided by fixed per-layer scales (measured on the first training batch) so one set of
hyper-parameters fits every layer; the scales are folded into the weights when exporting (:mod:`.io`).
Features at position 0 (BOS) are zeroed, as in circuit-tracer: the BOS residual is an outlier, and the BOS MLP
outputs (the same for every prompt) go into the constant term of attribution graphs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import einops
import torch
from jaxtyping import Float
from torch import Tensor, nn

from circuitry.errors import CircuitryError


@dataclass
class CLTConfig:
    n_layers: int
    d_model: int
    d_transcoder: int  # features per layer
    cross_layer: bool = True
    threshold_init: float = 0.5  # JumpReLU threshold, in units of normalised pre-activations
    bandwidth: float = 0.5  # width of the straight-through rectangle for the threshold gradient
    feature_input_hook: str = "hook_resid_mid"
    feature_output_hook: str = "hook_mlp_out"  # the only one supported: the features replace the MLP outputs

    def __post_init__(self) -> None:
        if self.feature_output_hook != "hook_mlp_out":
            raise CircuitryError(f"feature_output_hook {self.feature_output_hook!r} is not supported: circuitry's transcoders "
                                 "replace the MLP outputs (hook_mlp_out)")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JumpReLU(torch.autograd.Function):
    """``z * 1[z > θ]``; θ gets the rectangle-kernel pseudo-derivative (Rajamanoharan et al. 2024)."""

    @staticmethod
    def forward(ctx, z: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad * (z > threshold)
        window = ((z - threshold).abs() < eps / 2).to(grad.dtype)
        grad_t = grad * (-threshold / eps) * window
        grad_t = grad_t.reshape(-1, *threshold.shape).sum(0)
        return grad_z, grad_t, None


def check_has_mlps(model) -> None:
    """A cross-layer transcoder reads before and writes to MLPs: an attention-only model has none."""
    if model.cfg.attn_only:
        raise CircuitryError("this model has no MLPs: a cross-layer transcoder replaces MLPs")


class CrossLayerTranscoder(nn.Module):
    """Weights: ``W_enc [L, F, d]``, ``b_enc [L, F]``, ``log_threshold [L, F]``, ``W_dec[l] [F, L-l, d]``
    (``[F, 1, d]`` for per-layer transcoders), ``b_dec [L, d]`` (raw units)."""

    def __init__(self, cfg: CLTConfig):
        super().__init__()
        self.cfg = cfg
        L, F, d = cfg.n_layers, cfg.d_transcoder, cfg.d_model
        self.W_enc = nn.Parameter(torch.empty(L, F, d).uniform_(-1, 1) / math.sqrt(d))
        self.b_enc = nn.Parameter(torch.zeros(L, F))
        self.log_threshold = nn.Parameter(torch.full((L, F), math.log(cfg.threshold_init)))
        self.W_dec = nn.ParameterList(
            [nn.Parameter(torch.empty(F, self.n_targets(l), d).uniform_(-1, 1) / math.sqrt(L * F)) for l in range(L)]
        )
        self.b_dec = nn.Parameter(torch.zeros(L, d))
        self.register_buffer("input_scale", torch.ones(L))
        self.register_buffer("output_scale", torch.ones(L))

    def n_targets(self, layer: int) -> int:
        return self.cfg.n_layers - layer if self.cfg.cross_layer else 1

    @property
    def threshold(self) -> Float[Tensor, "layer feature"]:
        return self.log_threshold.exp()

    def decoder_norms(self) -> Float[Tensor, "layer feature"]:
        """‖W_dec,f‖ over all target layers (normalised units), the weight in the sparsity penalty."""
        return torch.stack([w.flatten(1).norm(dim=-1) for w in self.W_dec])

    def pre_activations(self, resid_mid: Float[Tensor, "... layer d_model"]) -> Float[Tensor, "... layer feature"]:
        x = resid_mid / self.input_scale[:, None]
        return einops.einsum(x, self.W_enc, "... layer d, layer f d -> ... layer f") + self.b_enc

    def activate(self, pre: Float[Tensor, "... layer feature"]) -> Float[Tensor, "... layer feature"]:
        return JumpReLU.apply(pre, self.threshold, self.cfg.bandwidth)

    def encode(self, resid_mid: Float[Tensor, "batch pos layer d_model"]) -> Float[Tensor, "batch pos layer feature"]:
        acts = self.activate(self.pre_activations(resid_mid))
        return torch.cat([torch.zeros_like(acts[:, :1]), acts[:, 1:]], dim=1)  # no features at BOS

    def decode(self, acts: Float[Tensor, "... layer feature"]) -> Float[Tensor, "... layer d_model"]:
        """Reconstruction of every layer's MLP output (raw units)."""
        L = self.cfg.n_layers
        outs = [torch.zeros_like(acts[..., 0, :1].expand(*acts.shape[:-2], self.cfg.d_model)) for _ in range(L)]
        for src in range(L):
            writes = einops.einsum(acts[..., src, :], self.W_dec[src], "... f, f t d -> ... t d")
            for j in range(self.n_targets(src)):
                outs[src + j] = outs[src + j] + writes[..., j, :]
        out = torch.stack(outs, dim=-2)
        return out * self.output_scale[:, None] + self.b_dec

    def decode_layer(self, acts: Float[Tensor, "... layer feature"], layer: int) -> Float[Tensor, "... d_model"]:
        """Reconstruction of one layer's MLP output from the features of layers ≤ ``layer``."""
        out = self.b_dec[layer].expand(*acts.shape[:-2], -1)
        for src in range(layer + 1):
            j = layer - src
            if j < self.n_targets(src):
                out = out + self.output_scale[layer] * acts[..., src, :] @ self.W_dec[src][:, j, :]
        return out

    def forward(self, resid_mid: Float[Tensor, "batch pos layer d_model"]) -> tuple[Tensor, Tensor]:
        acts = self.encode(resid_mid)
        return self.decode(acts), acts

    def raw_encoder(self) -> Float[Tensor, "layer feature d_model"]:
        """Encoder rows in raw activation units (input scale folded in): pre = raw · x + b_enc."""
        return self.W_enc / self.input_scale[:, None, None]

    def raw_decoder(self, layer: int) -> Float[Tensor, "feature target d_model"]:
        """Decoders of one source layer in raw units (output scales of its target layers folded in)."""
        return self.W_dec[layer] * self.output_scale[layer : layer + self.n_targets(layer), None]

    def layer_activations(self, x: Float[Tensor, "... d_model"], layer: int) -> Float[Tensor, "... feature"]:
        """JumpReLU activations of one layer's features from that layer's input (forward only)."""
        pre = einops.einsum(x, self.raw_encoder()[layer], "... d, f d -> ... f") + self.b_enc[layer]
        return pre * (pre > self.threshold[layer])

    def feature_write(self, layer: int, feature: int) -> Float[Tensor, "target d_model"]:
        """What one unit of feature (layer, feature) adds to ``hook_mlp_out`` of layers layer.. (raw units)."""
        return self.raw_decoder(layer)[feature]

    def fingerprint_tensors(self) -> dict[str, Tensor]:
        return {k: v.detach() for k, v in self.state_dict().items()}
