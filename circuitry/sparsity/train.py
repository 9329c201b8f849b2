"""Sparse attention post-training: minimise expected connectivity subject to CE <= target.

Lagrangian (GECO-style) form: L = connectivity + λ (CE - CE_target); every model weight and the
gate biases are trained, λ >= 0 follows multiplicative dual ascent on an EMA of the constraint,
λ <- λ exp(η (CE_ema - CE_target)). The target defaults to the dense model's held-out CE times
(1 + tolerance). Logs (step, CE, connectivity, λ) to JSONL; checkpoints hold weights, AdamW
state, λ, the EMA and the torch RNG (the Gumbel noise), and data are indexed by step, so a
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformer_lens.utilities import lm_cross_entropy_loss

from circuitry.artifacts import reading
from circuitry.checkpoint import nonfinite_loss, prepare_run_dir, resume_run, save_checkpoint, trim_log
from circuitry.data import check_length, check_same_data, token_source
from circuitry.distributed import barrier, is_main, mean_over_ranks, rank_and_world, shard, wrap
from circuitry.errors import CircuitryError
from circuitry.lora import add_lora, lora_target_of, merge_lora
from circuitry.progress import tqdm
from circuitry.sparsity.connectivity import expected_connectivity, measure_connectivity
from circuitry.sparsity.gates import attach_gates, check_dense
from circuitry.training import (
    autocast,
    check_fields,
    check_options,
    deterministic,
    gradients,
    micro_batches,
    no_sync,
    rng_rewinder,
    set_activation_checkpointing,
)
from circuitry.zoo.pretrain import heldout_ce
from circuitry.zoo.registry import model_fingerprint, save_model

CHECKPOINT = "checkpoint.safetensors"
LOG = "sparsify_log.jsonl"
QK_PARAMS = ("W_Q", "W_K", "b_Q", "b_K", "_W_K", "_b_K")  # TransformerLens names (GQA keys are _W_K/_b_K)


@dataclass
class SparsifyConfig:
    steps: int = 3500
    batch_size: int = 32
    lr: float = 1e-4  # model weights: low, so the dense solution is kept while gates close
    qk_lr: float = 1e-4  # query/key weights (a separate group so large runs can raise it)
    bias_lr: float = 2e-2  # gate biases: each head's threshold moves fast
    warmup: int = 50
    tolerance: float = 0.0
    target_ce: float | None = None  # None: dense held-out CE x (1 + tolerance)
    bias_init: float = 5.0  # gates start open: sigmoid(score + 5) ~ 1 for most edges
    learn_bias: bool = True  # False: the per-head biases stay at bias_init (only q/k and the weights move the gates)
    renormalise: bool = False  # rescale each gated attention row to sum 1 (the paper does not)
    lambda_init: float = 100.0  # start CE-dominated; λ falls while CE is under target
    dual_lr: float = 0.3  # η of the multiplicative dual update
    lambda_max: float = 1e4
    ema: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    heldout_sequences: int = 1024
    seq_len: int | None = None  # training/held-out sequence length; None: the model's n_ctx
    grad_accum: int = 1  # micro-batches per step (each process's share of batch_size is split this many ways)
    precision: str = "auto"  # bf16 autocast on a GPU, fp32 on CPU; or "fp32" / "bf16"
    activation_checkpointing: bool = False  # recompute block activations in the backward pass
    lora_rank: int = 0  # 0: train all weights; r > 0: rank-r LoRA adapters on attention and MLP weights
    lora_alpha: float | None = None  # adapter scale alpha / r; None: alpha = r

    def __post_init__(self) -> None:
        check_fields(self, positive=("steps", "batch_size", "lr", "qk_lr", "bias_lr", "warmup", "target_ce", "lambda_init", "dual_lr",
                                     "lambda_max", "grad_clip", "checkpoint_every", "log_every", "heldout_sequences", "lora_alpha"),
                     non_negative=("tolerance", "ema", "lora_rank"))  # fmt: skip
        if self.ema >= 1:
            raise CircuitryError(f"ema must be < 1, got {self.ema}")
        if self.target_ce is not None and self.tolerance:
            raise CircuitryError("give target_ce or tolerance, not both (tolerance sets the target from the dense model's CE)")
        if self.lora_alpha is not None and not self.lora_rank:
            raise CircuitryError("lora_alpha (--lora-alpha) scales LoRA adapters: it needs lora_rank (--lora-rank) > 0")


@gradients("sparse post-training")
def sparsify(
    model, out: str | Path, cfg: SparsifyConfig, resume: bool = False, name: str | None = None, parent: str | None = None,
    progress: bool = True, data=None,
):
    """Post-train ``model`` (dense, with a tokenizer) in place into a gated sparse model written to ``out``
    (``name``: the model's name in its meta.json, by default ``out``'s folder name; ``parent``: the name the dense
    model is loaded by, by default the name a zoo or saved model records, else ``model.cfg.model_name``; the
    meta.json's ``command`` uses it; ``data``: a text or token file or a :class:`circuitry.data.TextData` to train
    and measure on, by default the model's synthetic language)."""
    out = Path(out)
    name = name or out.name
    parent = parent or getattr(model, "circuitry_info", {}).get("name") or model.cfg.model_name
    ctx = check_options(cfg.grad_accum, cfg.precision, cfg.seq_len, model.cfg.n_ctx, cfg.batch_size)
    check_dense(model)  # before anything is written or measured
    stream = token_source(model, data)
    check_length(stream, ctx)  # data too short fails before the run directory is made
    ckpt = prepare_run_dir(out, resume, CHECKPOINT)
    source = model_fingerprint(model)  # the dense model the run starts from (a resume must start from the same)
    dense_ce = heldout_ce(model, stream, cfg.heldout_sequences, length=ctx)
    target = cfg.target_ce if cfg.target_ce is not None else dense_ce * (1 + cfg.tolerance)
    gates = attach_gates(model, bias_init=cfg.bias_init, mode="train", renormalise=cfg.renormalise, learn_bias=cfg.learn_bias)
    rank, world = rank_and_world()
    if cfg.lora_rank:
        torch.manual_seed(cfg.seed)  # adapter initialisation
        add_lora(model, cfg.lora_rank, cfg.lora_alpha)
    set_activation_checkpointing(model, cfg.activation_checkpointing)
    model.train()
    groups: dict[str, list] = {"weights": [], "qk": [], "bias": [gates.bias]}
    for n, p in model.named_parameters():
        if not n.startswith("gates.") and p.requires_grad:  # with LoRA: the adapters (base weights are frozen)
            groups["qk" if (lora_target_of(n) or n.split(".")[-1]) in QK_PARAMS else "weights"].append(p)
    lrs = {"weights": cfg.lr, "qk": cfg.qk_lr, "bias": cfg.bias_lr}
    opt = torch.optim.AdamW(
        [{"params": groups[k], "lr": lrs[k], "base_lr": lrs[k]} for k in groups], betas=(0.9, 0.98), weight_decay=0.0
    )
    runner = wrap(model)  # DistributedDataParallel under torchrun
    torch.manual_seed(cfg.seed)
    start, lam, ce_ema, elapsed = 0, cfg.lambda_init, None, 0.0
    main = is_main()
    if resume:
        start, state = resume_run(ckpt, model, opt, cfg, source)
        if main:
            trim_log(out / LOG, start)
        with reading(ckpt):
            check_same_data(state.get("data"), stream, ckpt)
            lam, ce_ema, elapsed = float(state["lambda"]), state["ce_ema"], float(state["elapsed"])
            ce_ema = None if ce_ema is None else float(ce_ema)
    t0 = time.time() - elapsed
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"sparsify {name}", disable=not (progress and main))
    with deterministic(), open(out / LOG if main else os.devnull, "a" if resume else "w") as log:
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * min(1.0, (step + 1) / cfg.warmup)
            parts = micro_batches(shard(stream.batch(f"sparsify|{cfg.seed}|{step}", cfg.batch_size, ctx)), cfg.grad_accum)
            opt.zero_grad(set_to_none=True)
            ce_sum, conn_sum, rewind = 0.0, 0.0, rng_rewinder()
            for i, tokens in enumerate(parts):
                rewind()
                # gate noise: drawn for the global batch, this micro-batch keeps its rows (so neither the number
                # of processes nor of micro-batches changes the run beyond float summation order)
                gates.shard = (rank * len(parts) + i, world * len(parts))
                with no_sync(runner, i == len(parts) - 1):
                    with autocast(cfg.precision, tokens.device):
                        # CE from float32 logits: under bf16 autocast the log-softmax would run in bf16, and the
                        # logged CE and the λ update would move in steps of 1/128 (what return_type="loss" gives)
                        ce = lm_cross_entropy_loss(runner(tokens).float(), tokens)
                        conn = expected_connectivity(gates)
                    ((conn + lam * ce) / len(parts)).backward()  # same gradients as conn + λ (CE - target)
                ce_sum, conn_sum = ce_sum + ce.item() / len(parts), conn_sum + conn.item() / len(parts)
            if mean_over_ranks(float(math.isfinite(ce_sum) and math.isfinite(conn_sum))) < 1:  # all ranks stop together
                raise nonfinite_loss(step, ckpt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            ce_v = mean_over_ranks(ce_sum)  # the global-batch CE: λ stays identical on every rank
            ce_ema = ce_v if ce_ema is None else cfg.ema * ce_ema + (1 - cfg.ema) * ce_v
            # exponent capped: a finite but huge CE (a diverging run) would overflow math.exp; λ is capped anyway
            lam = min(cfg.lambda_max, max(1e-6, lam * math.exp(min(cfg.dual_lr * (ce_ema - target), 50.0))))
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                rec = {"step": step, "ce": round(ce_v, 5), "ce_ema": round(ce_ema, 5), "connectivity": round(mean_over_ranks(conn_sum), 6),
                       "lambda": lam, "target": round(target, 5), "seconds": round(time.time() - t0, 1)}  # fmt: skip
                log.write(json.dumps(rec) + "\n")
                log.flush()
                bar.set_postfix(ce=f"{ce_v:.3f}", conn=f"{conn_sum:.3f}", lam=f"{lam:.2g}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                state = {"config": asdict(cfg), "lambda": lam, "ce_ema": ce_ema, "elapsed": time.time() - t0, "data": stream.info(),
                         "source_model": source}  # fmt: skip
                if main:
                    save_checkpoint(ckpt, model, opt, step + 1, state)
                barrier()
    seconds = time.time() - t0
    opt.zero_grad(set_to_none=True)  # the returned model holds no stale gradients (a later backward would add to them)
    gates.shard = (0, 1)
    set_activation_checkpointing(model, False)
    if cfg.lora_rank:
        merge_lora(model)  # plain weights again, saved in the usual format
    if not main:
        barrier()
        return model, None
    model.eval()
    gates.set_mode("eval")
    sparse_ce = heldout_ce(model, stream, cfg.heldout_sequences, length=ctx)
    if sparse_ce > target:
        why = (f"the target is below the dense model's own CE {dense_ce:.4f}" if target < dense_ce
               else "train longer, or with lower learning rates")  # fmt: skip
        warnings.warn(f"held-out CE {sparse_ce:.4f} is above the target {target:.4f}: the constraint is not met ({why})", stacklevel=2)
    report = measure_connectivity(model, stream.heldout(cfg.heldout_sequences, ctx))
    meta = {
        "name": name,
        "kind": "sparse",
        "parent": parent,
        "heldout_ce": round(sparse_ce, 5),
        "dense_heldout_ce": round(dense_ce, 5),
        "target_ce": round(target, 5),
        "connectivity": round(report.connectivity, 6),
        "keys_per_query": round(report.keys_per_query, 4),
        "floor": round(report.floor, 6),
        "train_seconds": round(seconds, 1),
        "sparsify_config": asdict(cfg),
        "command": f"circuitry sparsify --model {parent} --out {out} --steps {cfg.steps} --tolerance {cfg.tolerance} "
        f"--batch-size {cfg.batch_size} --lr {cfg.lr} --qk-lr {cfg.qk_lr} --bias-lr {cfg.bias_lr} --seed {cfg.seed}" + _scale_flags(cfg),
    }
    data_info = stream.info()
    if data_info["source"] == "synthetic":
        meta.update(stream.language.options())  # the parent's non-default language, carried to the sparse model
    else:
        meta["data"] = data_info
        meta["command"] += f" --data {shlex.quote(data_info['source'])}" if Path(data_info["source"]).is_file() else " --data <Python data>"
    meta["command"] += _python_only(cfg)
    save_model(model, out, meta)
    ckpt.unlink(missing_ok=True)
    barrier()
    model.cfg.model_name = name
    return model, meta


# SparsifyConfig fields the CLI sets (the rest have no flag: a run that changes them is a Python run)
CLI_FIELDS = {"steps", "tolerance", "batch_size", "lr", "qk_lr", "bias_lr", "seed", "seq_len", "grad_accum", "precision",
              "lora_rank", "lora_alpha", "activation_checkpointing", "learn_bias", "renormalise"}  # fmt: skip


def _python_only(cfg: SparsifyConfig) -> str:
    """The fields of ``cfg`` with no CLI flag that differ from their defaults, as a shell comment after the command
    (so the command says it does not reproduce the run by itself)."""
    default = SparsifyConfig()
    changed = {k: v for k, v in asdict(cfg).items() if k not in CLI_FIELDS and v != getattr(default, k)}
    return "  # and, from Python: " + ", ".join(f"{k}={v!r}" for k, v in changed.items()) if changed else ""


def _scale_flags(cfg: SparsifyConfig) -> str:
    """The large-model options of ``cfg`` that differ from their defaults, as CLI flags."""
    flags = {"--seq-len": cfg.seq_len, "--grad-accum": cfg.grad_accum if cfg.grad_accum != 1 else None,
             "--precision": cfg.precision if cfg.precision != "auto" else None, "--lora-rank": cfg.lora_rank or None,
             "--lora-alpha": cfg.lora_alpha}  # fmt: skip
    out = "".join(f" {k} {v}" for k, v in flags.items() if v is not None)
    switches = {"--activation-checkpointing": cfg.activation_checkpointing, "--fixed-bias": not cfg.learn_bias,
                "--renormalise": cfg.renormalise}  # fmt: skip
    return out + "".join(f" {k}" for k, on in switches.items() if on)
