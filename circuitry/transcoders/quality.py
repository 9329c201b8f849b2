"""Quality of a transcoder on held-out text: reconstruction, sparsity, dead features, replacement-model CE."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from circuitry.data import token_source
from circuitry.progress import progress_bar
from circuitry.transcoders.clt import CrossLayerTranscoder
from circuitry.transcoders.train import check_quality_length, model_activations


@dataclass
class CLTQuality:
    explained_variance: list[float]  # per layer, 1 − Σ‖ŷ−y‖² / Σ‖y−ȳ‖² (positions ≥ 1)
    nmse: list[float]  # per layer, Σ‖ŷ−y‖² / Σ‖y‖²
    l0: list[float]  # active features per token, per layer
    dead_fraction: float  # features that never fire on the held-out tokens
    ce_original: float
    ce_replacement: float  # every MLP output replaced by the CLT reconstruction
    ce_zero_ablation: float  # every MLP output zeroed
    ce_recovered: float  # (ce_zero − ce_replacement) / (ce_zero − ce_original)
    n_tokens: int
    n_sequences: int | None = None  # held-out sequences measured (fewer than asked when the data is short)

    @property
    def mean_explained_variance(self) -> float:
        return sum(self.explained_variance) / len(self.explained_variance)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_explained_variance": self.mean_explained_variance}


def replacement_hooks(clt: CrossLayerTranscoder, n_layers: int) -> list[tuple[str, object]]:
    """Hooks that replace every ``hook_mlp_out`` by the CLT reconstruction, encoding each layer's features from
    the replacement model's own MLP-input residual (``hook_resid_mid``, or ``hook_resid_pre`` for parallel blocks) (so errors compound as they would in a real replacement).
    Position 0 (BOS, where features are off) keeps the true MLP output."""
    acts: dict[int, Tensor] = {}

    def encode(x, hook):
        acts[hook.layer()] = clt.layer_activations(x, hook.layer())
        return x

    def replace(y, hook):
        layer = hook.layer()
        stacked = torch.stack([acts[l] for l in range(layer + 1)], dim=-2)
        recon = clt.decode_layer(stacked, layer)
        return torch.cat([y[:, :1], recon[:, 1:]], dim=1)

    return [(f"blocks.{l}.{clt.cfg.feature_input_hook}", encode) for l in range(n_layers)] + [
        (f"blocks.{l}.hook_mlp_out", replace) for l in range(n_layers)
    ]


def _ce(model, tokens: Tensor, hooks, batch_size: int, bar) -> float:
    total = 0.0
    for chunk in tokens.split(batch_size):
        bar.update()
        total += model.run_with_hooks(chunk, return_type="loss", fwd_hooks=hooks).item() * len(chunk)
    return total / len(tokens)


@torch.no_grad()
def evaluate_clt(
    model, clt: CrossLayerTranscoder, n_sequences: int = 256, batch_size: int = 32, seq_len: int | None = None, data=None,
    progress: bool | None = False,
) -> CLTQuality:
    """All figures on ``n_sequences`` held-out sequences of ``seq_len`` tokens (default: the model's context) of
    ``data`` (see :func:`circuitry.data.token_source`; default: the model's synthetic language). ``progress``: a
    bar over the batches (None: only on a terminal)."""
    length = seq_len or model.cfg.n_ctx
    check_quality_length(length)
    tokens = token_source(model, data).heldout(n_sequences, length)
    bar = progress_bar(total=4 * len(tokens.split(batch_size)), desc="transcoder quality", unit="batch", progress=progress)
    L = model.cfg.n_layers
    err = torch.zeros(L, dtype=torch.float64)
    sq = torch.zeros(L, dtype=torch.float64)
    fired = torch.zeros(L, clt.cfg.d_transcoder, dtype=torch.bool)
    l0 = torch.zeros(L, dtype=torch.float64)
    n = 0
    ys = []
    for chunk in tokens.split(batch_size):
        bar.update()
        x, y = model_activations(model, chunk, clt.cfg.feature_input_hook)
        recon, acts = clt(x)
        x, y, recon, acts = x[:, 1:], y[:, 1:], recon[:, 1:], acts[:, 1:]
        err += (recon - y).double().pow(2).sum((0, 1, 3))
        sq += y.double().pow(2).sum((0, 1, 3))
        ys.append(y.double().sum((0, 1)))
        fired |= (acts > 0).flatten(0, 1).any(0)
        l0 += (acts > 0).double().sum((0, 1, 3))
        n += y.shape[0] * y.shape[1]
    mean = torch.stack(ys).sum(0) / n  # [layer, d]
    var = sq - n * mean.pow(2).sum(-1)  # Σ‖y − ȳ‖²
    zero_hooks = [(f"blocks.{l}.hook_mlp_out", lambda y, hook: torch.cat([y[:, :1], torch.zeros_like(y[:, 1:])], 1)) for l in range(L)]
    ce_orig = _ce(model, tokens, [], batch_size, bar)
    ce_repl = _ce(model, tokens, replacement_hooks(clt, L), batch_size, bar)
    ce_zero = _ce(model, tokens, zero_hooks, batch_size, bar)
    bar.close()
    return CLTQuality(
        explained_variance=[round(v, 5) for v in (1 - err / var).tolist()],
        nmse=[round(v, 5) for v in (err / sq).tolist()],
        l0=[round(v, 2) for v in (l0 / n).tolist()],
        dead_fraction=round(1 - fired.float().mean().item(), 5),
        ce_original=round(ce_orig, 5),
        ce_replacement=round(ce_repl, 5),
        ce_zero_ablation=round(ce_zero, 5),
        ce_recovered=round((ce_zero - ce_repl) / (ce_zero - ce_orig), 5),
        n_tokens=n,
        n_sequences=len(tokens),
    )
