"""The local replacement model of one prompt (Ameisen et al. 2025), built from TransformerLens hooks.

At the frozen point the attention patterns (after gates, for sparse models) and every layer-norm scale keep
their values on the prompt, and each MLP output is replaced by an injected tensor (CLT reconstruction +
error, which equals the true output). The model is then linear in its sources — token embeddings
(``hook_embed``), feature activations and error vectors — so every target (a feature's pre-activation or a
demeaned logit) is an exact sum of source contributions plus a constant (biases, positional embeddings).

:func:`backward_rows` runs the frozen model on a batch of copies of the prompt, one copy per target row,
and returns each row's gradient at every write point (embedding + each layer's MLP output).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitry.transcoders.clt import CrossLayerTranscoder
from circuitry.transcoders.train import model_activations


@dataclass
class FrozenPoint:
    """Everything the local replacement model of one prompt freezes or reads. ``T`` = prompt length."""

    tokens: Int[Tensor, " pos"]
    patterns: list[Float[Tensor, "head pos pos"]]  # per layer, after gates
    scales: dict[str, Tensor]  # layer-norm scales by hook name, [pos, 1]
    resid_mid: Float[Tensor, "pos layer d_model"]  # the CLT's input (hook_resid_mid, or resid_pre if parallel)
    mlp_out: Float[Tensor, "pos layer d_model"]
    acts: Float[Tensor, "pos layer feature"]  # CLT activations (0 at BOS)
    pre: Float[Tensor, "pos layer feature"]  # CLT pre-activations
    recon: Float[Tensor, "pos layer d_model"]  # CLT reconstruction (incl. b_dec)
    embed: Float[Tensor, "pos d_model"]  # hook_embed
    logits: Float[Tensor, " vocab"]  # at the last position

    @property
    def errors(self) -> Float[Tensor, "pos layer d_model"]:
        """MLP output − CLT reconstruction, zero at position 0 as in circuit-tracer (whose CLTs, like these, also
        have no features there). With BOS first, position 0 attends only to itself, so its MLP outputs are the
        same for every prompt: they join the constant term (with the biases) instead of becoming error nodes.
        :func:`constant_injections` puts them there."""
        err = self.mlp_out - self.recon
        err[0] = 0.0
        return err

    @property
    def n_pos(self) -> int:
        return len(self.tokens)


@torch.no_grad()
def freeze(model, clt: CrossLayerTranscoder, tokens: Int[Tensor, " pos"]) -> FrozenPoint:
    L = model.cfg.n_layers
    keep = {f"blocks.{l}.attn.hook_pattern" for l in range(L)} | {"hook_embed"}
    logits, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n in keep or n.endswith("hook_scale"))
    x, y = model_activations(model, tokens[None], clt.cfg.feature_input_hook)
    recon, acts = clt(x)
    return FrozenPoint(
        tokens=tokens,
        patterns=[cache[f"blocks.{l}.attn.hook_pattern"][0] for l in range(L)],
        scales={k: v[0] for k, v in cache.items() if k.endswith("hook_scale")},
        resid_mid=x[0],
        mlp_out=y[0],
        acts=acts[0],
        pre=clt.pre_activations(x)[0],
        recon=recon[0],
        embed=cache["hook_embed"][0],
        logits=logits[0, -1],
    )


def write_points(model) -> list[str]:
    """Hook names where sources write: the token embedding, then each layer's MLP output."""
    return ["hook_embed"] + [f"blocks.{l}.hook_mlp_out" for l in range(model.cfg.n_layers)]


def frozen_forward(
    model,
    point: FrozenPoint,
    injections: list[Tensor],
    diagonal_only: bool = False,
    capture: tuple[str, ...] = (),
) -> dict[str, Tensor]:
    """Run the frozen model on ``len(injections[0])`` copies of the prompt.

    ``injections`` = tensors [batch, pos, d_model] for each of :func:`write_points`. ``diagonal_only`` keeps
    only each query's attention to itself (paths that never change position). Returns the activations at the
    ``capture`` hook names plus ``unembed.hook_in``."""
    L = model.cfg.n_layers
    batch = injections[0].shape[0]
    captured: dict[str, Tensor] = {}
    eye = torch.eye(point.n_pos, dtype=torch.bool)

    def pattern_hook(pattern, hook):
        frozen = point.patterns[hook.layer()]
        return (frozen * eye if diagonal_only else frozen).expand(batch, -1, -1, -1)

    def scale_hook(scale, hook):
        return point.scales[hook.name].expand(batch, -1, -1)

    def inject(index):
        return lambda act, hook: injections[index]

    def grab(act, hook):
        captured[hook.name] = act
        return act

    hooks = [(f"blocks.{l}.attn.hook_pattern", pattern_hook) for l in range(L)]
    hooks += [(name, scale_hook) for name in point.scales]
    hooks += [(name, inject(i)) for i, name in enumerate(write_points(model))]
    hooks += [(name, grab) for name in (*capture, "unembed.hook_in")]
    model.run_with_hooks(point.tokens[None].expand(batch, -1), fwd_hooks=hooks, return_type="logits")
    return captured


def constant_injections(point: FrozenPoint, b_dec: Float[Tensor, "layer d_model"]) -> list[Tensor]:
    """What each write point carries when every source (embedding, feature, error) is zero: the decoder bias, and
    at BOS the whole MLP output, which no error node carries (see :attr:`FrozenPoint.errors`)."""
    mlp = b_dec[None].expand(point.n_pos, -1, -1).clone()
    mlp[0] = point.mlp_out[0]
    return [point.embed.new_zeros(1, point.n_pos, point.embed.shape[-1])] + [mlp[None, :, l] for l in range(mlp.shape[1])]


def true_injections(point: FrozenPoint, batch: int) -> list[Tensor]:
    """Injections that reproduce the real forward pass (embedding, then true MLP outputs)."""
    tensors = [point.embed] + [point.mlp_out[:, l] for l in range(point.mlp_out.shape[1])]
    return [t[None].expand(batch, -1, -1).clone().requires_grad_(True) for t in tensors]


def backward_rows(
    model,
    point: FrozenPoint,
    read_hook: list[str],
    read_pos: list[int],
    read_vec: Float[Tensor, "row d"],
    batch_size: int = 128,
    diagonal_only: bool = False,
    grad_at: tuple[str, ...] = (),
):
    """For each row r: gradient of ⟨activation at read_hook[r], position read_pos[r]⟩ · read_vec[r] with
    respect to every write point (and to the ``grad_at`` hook activations). Yields (row slice, grads) with
    grads[name] of shape [rows, pos, ...] per chunk of ``batch_size`` rows."""
    names = write_points(model)
    for start in range(0, len(read_hook), batch_size):
        rows = slice(start, min(start + batch_size, len(read_hook)))
        n = rows.stop - rows.start
        inj = true_injections(point, n)
        with torch.enable_grad():
            acts = frozen_forward(model, point, inj, diagonal_only, capture=tuple(set(read_hook[rows]) | set(grad_at)))
            idx = torch.arange(n)
            objective = torch.zeros(())
            for name in set(read_hook[rows]):
                sel = torch.tensor([h == name for h in read_hook[rows]])
                pos = torch.tensor(read_pos[rows])[sel]
                objective = objective + (acts[name][idx[sel], pos].flatten(1) * read_vec[rows][sel]).sum()
            extra = [acts[g] for g in grad_at]
            grads = torch.autograd.grad(objective, inj + extra, allow_unused=True)
        out = {name: (g if g is not None else torch.zeros_like(t)) for name, g, t in zip(names + list(grad_at), grads, inj + extra)}
        yield rows, out
