"""Train a cross-layer transcoder on activations streamed from a model over its synthetic language or given data.

Loss per token (normalised units, BOS excluded):
    Σ_l ‖ŷ_l − y_l‖² / d  +  λ(t) Σ_{l,f} tanh(c ‖W_dec,f‖ a_f)  +  λ_p Σ_{l,f} ReLU(θ_f − h_f) ‖W_dec,f‖
with λ ramped linearly from 0 over the first ``sparsity_warmup`` fraction of training (Ameisen et al. 2025).
Checkpoints (weights, Adam, RNG, step) are atomic; ``resume=True`` continues bit-identically.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from circuitry.artifacts import reading
from circuitry.checkpoint import nonfinite_loss, prepare_run_dir, resume_run, save_checkpoint, trim_log
from circuitry.data import check_length, check_same_data, token_source
from circuitry.distributed import barrier, is_main, mean_over_ranks, shard, wrap
from circuitry.errors import CircuitryError
from circuitry.progress import tqdm
from circuitry.training import autocast, check_fields, check_options, deterministic, gradients, micro_batches, no_sync
from circuitry.transcoders.clt import CLTConfig, CrossLayerTranscoder, check_has_mlps
from circuitry.zoo.registry import model_fingerprint

CHECKPOINT = "checkpoint.safetensors"
LOG = "train_log.jsonl"


@dataclass
class CLTTrainConfig:
    d_transcoder: int = 512
    cross_layer: bool = True
    steps: int = 2000
    batch_size: int = 24  # sequences of n_ctx tokens
    lr: float = 1e-3
    warmup: int = 100
    sparsity_coef: float = 5e-3
    sparsity_c: float = 1.0
    sparsity_warmup: float = 0.5
    preact_coef: float = 3e-6
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25
    seq_len: int | None = None  # sequence length of the activation batches; None: the model's n_ctx
    grad_accum: int = 1  # micro-batches per step
    precision: str = "auto"  # bf16 autocast on a GPU, fp32 on CPU; or "fp32" / "bf16"

    def __post_init__(self) -> None:
        check_fields(self, positive=("d_transcoder", "steps", "batch_size", "lr", "warmup", "sparsity_c", "checkpoint_every", "log_every"),
                     non_negative=("sparsity_coef", "sparsity_warmup", "preact_coef"))  # fmt: skip


def check_quality_length(length: int) -> None:
    """The CE recovered needs a prediction that reads an ablated MLP: position 0 (BOS) is never ablated, and a
    2-token sequence predicts from position 0 alone, so zero-ablation could not change its CE."""
    if length < 3:
        raise CircuitryError(f"transcoder quality needs sequences of at least 3 tokens, got {length}")


def input_hook(model) -> str:
    """Where each layer's MLP reads the residual stream: ``hook_resid_mid``, or ``hook_resid_pre`` in models
    whose attention and MLP run in parallel (GPT-J, Pythia)."""
    return "hook_resid_pre" if getattr(model.cfg, "parallel_attn_mlp", False) else "hook_resid_mid"


def model_activations(model, tokens, read: str | None = None) -> tuple[Float[Tensor, "batch pos layer d"], Float[Tensor, "batch pos layer d"]]:
    """(MLP input residual ``read``, default :func:`input_hook`; ``hook_mlp_out``) of every layer, stacked on a
    layer axis; no gradients."""
    read = read or input_hook(model)
    names = [f"blocks.{l}.{k}" for l in range(model.cfg.n_layers) for k in (read, "hook_mlp_out")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    L = model.cfg.n_layers
    x = torch.stack([cache[f"blocks.{l}.{read}"] for l in range(L)], dim=2)
    y = torch.stack([cache[f"blocks.{l}.hook_mlp_out"] for l in range(L)], dim=2)
    return x, y


def clt_loss(clt: CrossLayerTranscoder, x: Tensor, y: Tensor, sparsity_coef: float, cfg: CLTTrainConfig) -> tuple[Tensor, dict[str, float]]:
    """Loss on one batch of activations (positions ≥ 1); returns (loss, scalars for the log)."""
    x, y = x[:, 1:], y[:, 1:]
    pre = clt.pre_activations(x)
    acts = clt.activate(pre)
    recon = clt.decode(acts)
    scale = clt.output_scale[:, None]
    mse = ((recon - y) / scale).pow(2).mean(-1).sum(-1).mean()
    norms = clt.decoder_norms()
    sparsity = torch.tanh(cfg.sparsity_c * norms * acts).sum((-1, -2)).mean()
    preact = (torch.relu(clt.threshold - pre) * norms).sum((-1, -2)).mean()
    loss = mse + sparsity_coef * sparsity + cfg.preact_coef * preact
    l0 = (acts > 0).float().sum(-1).mean().item()
    return loss, {"mse": mse.item(), "sparsity": sparsity.item(), "l0": l0}


class CLTObjective(nn.Module):
    """The training loss as a module, so DistributedDataParallel can wrap it (its forward is the loss)."""

    def __init__(self, clt: CrossLayerTranscoder, cfg: CLTTrainConfig):
        super().__init__()
        self.clt, self.cfg = clt, cfg

    def forward(self, x: Tensor, y: Tensor, sparsity_coef: float) -> tuple[Tensor, dict[str, float]]:
        return clt_loss(self.clt, x, y, sparsity_coef, self.cfg)


def calibrate_scales(clt: CrossLayerTranscoder, x: Tensor, y: Tensor) -> None:
    """Per-layer input scale ‖x‖/√d and output scale std(y), from non-BOS positions of one batch."""
    x, y = x[:, 1:].flatten(0, 1), y[:, 1:].flatten(0, 1)
    d = x.shape[-1]
    clt.input_scale.copy_(x.norm(dim=-1).mean(0) / d**0.5)
    clt.output_scale.copy_((y - y.mean(0)).pow(2).mean((0, -1)).sqrt())
    with torch.no_grad():
        clt.b_dec.copy_(y.mean(0))


@gradients("CLT training")
def train_clt(
    model, out: str | Path, cfg: CLTTrainConfig, resume: bool = False, progress: bool = True, data=None
) -> tuple[CrossLayerTranscoder, dict[str, Any]]:
    """Train a CLT for ``model`` (with gates, if any, in their current mode); returns (clt, run info).
    ``data``: a text or token file or a :class:`circuitry.data.TextData`, by default the model's synthetic language.
    Saving and the quality report are the caller's (see :func:`circuitry.transcoders.io.save_clt`).
    Under ``torchrun`` each rank takes its shard of every global batch and DDP averages the gradients."""
    out = Path(out)
    ctx = check_options(cfg.grad_accum, cfg.precision, cfg.seq_len, model.cfg.n_ctx, cfg.batch_size)
    check_has_mlps(model)  # before the run directory is made
    check_quality_length(ctx)  # the quality report after training would fail on it
    stream = token_source(model, data)
    check_length(stream, ctx)  # data too short for training or for the quality report fails before any work
    ckpt = prepare_run_dir(out, resume, CHECKPOINT)
    if (out / "config.yaml").exists():
        raise CircuitryError(f"{out} already holds a transcoder; choose another --out")
    source = model_fingerprint(model)  # the model whose activations the transcoder learns (a resume must read the same)
    torch.manual_seed(cfg.seed)
    clt = CrossLayerTranscoder(CLTConfig(model.cfg.n_layers, model.cfg.d_model, cfg.d_transcoder, cfg.cross_layer,
                                         feature_input_hook=input_hook(model)))  # fmt: skip
    calibrate_scales(clt, *model_activations(model, stream.batch(f"clt|{cfg.seed}|calibrate", 64, ctx), clt.cfg.feature_input_hook))
    objective = wrap(CLTObjective(clt, cfg))
    opt = torch.optim.Adam(clt.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    start, elapsed = 0, 0.0
    if resume:
        start, state = resume_run(ckpt, clt, opt, cfg, source)
        with reading(ckpt):
            scales = {k: torch.tensor(state[k], dtype=clt.input_scale.dtype) for k in ("input_scale", "output_scale")}
            if any(v.shape != clt.input_scale.shape for v in scales.values()):
                raise ValueError(f"scales of shape {[tuple(v.shape) for v in scales.values()]}, expected {tuple(clt.input_scale.shape)}")
            clt.input_scale.copy_(scales["input_scale"])
            clt.output_scale.copy_(scales["output_scale"])
            elapsed = float(state["elapsed"])
            check_same_data(state.get("data"), stream, ckpt)
        if is_main():
            trim_log(out / LOG, start)
    t0 = time.time() - elapsed
    main = is_main()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="clt", disable=not (progress and main))
    with deterministic(), open(out / LOG if main else os.devnull, "a" if resume else "w") as log:
        for step in bar:
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * min(1.0, 10 * (1 - step / cfg.steps))
            for g in opt.param_groups:
                g["lr"] = lr
            coef = cfg.sparsity_coef * min(1.0, step / max(1, cfg.sparsity_warmup * cfg.steps))
            parts = micro_batches(shard(stream.batch(f"clt|{cfg.seed}|{step}", cfg.batch_size, ctx)), cfg.grad_accum)
            opt.zero_grad(set_to_none=True)
            loss_sum, stats = 0.0, {}
            for i, tokens in enumerate(parts):
                with autocast(cfg.precision, tokens.device):
                    x, y = model_activations(model, tokens, clt.cfg.feature_input_hook)
                with no_sync(objective, i == len(parts) - 1):
                    with autocast(cfg.precision, tokens.device):
                        loss, part = objective(x, y, coef)
                    (loss / len(parts)).backward()
                loss_sum += loss.item() / len(parts)
                stats = {k: stats.get(k, 0.0) + v / len(parts) for k, v in part.items()}
            if mean_over_ranks(float(math.isfinite(loss_sum))) < 1:  # every rank stops together
                raise nonfinite_loss(step, ckpt, "CLT loss")
            opt.step()
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                stats = {k: mean_over_ranks(v) for k, v in stats.items()}
                rec = {"step": step, "loss": round(mean_over_ranks(loss_sum), 5), **{k: round(v, 5) for k, v in stats.items()},
                       "sparsity_coef": coef, "seconds": round(time.time() - t0, 1)}  # fmt: skip
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(mse=f"{stats['mse']:.3f}", l0=f"{stats['l0']:.0f}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                state = {"config": asdict(cfg), "elapsed": time.time() - t0, "data": stream.info(), "source_model": source,
                         "input_scale": clt.input_scale.tolist(), "output_scale": clt.output_scale.tolist()}  # fmt: skip
                if main:
                    save_checkpoint(ckpt, clt, opt, step + 1, state)
                barrier()
    opt.zero_grad(set_to_none=True)  # no stale gradients on the returned transcoder
    return clt, {"train_seconds": round(time.time() - t0, 1), "train_config": asdict(cfg), "data": stream.info()}
