"""Pretrain a zoo model on the synthetic language (the command behind ``circuitry zoo build``).

Data are a pure function of (seed, step), so a resumed run sees exactly the batches an
uninterrupted run would. Checkpoints hold weights, AdamW state, RNG and the step.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from jaxtyping import Int
from torch import Tensor

from circuitry.checkpoint import nonfinite_loss, prepare_run_dir, resume_run, save_checkpoint, trim_log
from circuitry.errors import CircuitryError
from circuitry.progress import tqdm
from circuitry.training import deterministic, gradients
from circuitry.zoo.language import LANGUAGE_OPTIONS, SHIPPED_IOI_SHARE, SyntheticLanguage
from circuitry.zoo.registry import build_model, save_model

CHECKPOINT = "checkpoint.safetensors"
LOG = "train_log.jsonl"


@dataclass
class PretrainConfig:
    n_layers: int = 4
    n_heads: int = 8
    d_model: int = 128
    d_mlp: int = 512
    n_ctx: int = 64
    steps: int = 2500  # the shipped tiny-dense recipe
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    min_lr_frac: float = 0.05
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    heldout_sequences: int = 1024
    ioi_subject_rate: float = 0.0  # language option (SyntheticLanguage.ioi_subject_rate); 0 = the shipped language
    ioi_share: float = SHIPPED_IOI_SHARE  # language option (SyntheticLanguage.ioi_share): share of IOI sentences
    dropout: float = 0.0  # GPT-2-style dropout while training (embeddings, attention pattern, attn/MLP outputs)

    def __post_init__(self) -> None:
        for key in ("n_layers", "n_heads", "d_model", "d_mlp", "n_ctx", "steps", "batch_size"):
            if getattr(self, key) <= 0:
                raise CircuitryError(f"{key} must be positive, got {getattr(self, key)}")
        if self.d_model % self.n_heads:
            raise CircuitryError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise CircuitryError(f"dropout must be in [0, 1), got {self.dropout}")
        self.language()  # checks the language options before anything is written

    def language(self) -> SyntheticLanguage:
        return SyntheticLanguage(**{k: getattr(self, k) for k in LANGUAGE_OPTIONS})

    def flags(self) -> str:
        """The ``circuitry zoo build`` options that set this architecture and language (none for the defaults)."""
        default = PretrainConfig()
        keys = ("n_layers", "n_heads", "d_model", "d_mlp", *LANGUAGE_OPTIONS, "dropout")
        return "".join(f" --{k.replace('_', '-')} {getattr(self, k)}" for k in keys if getattr(self, k) != getattr(default, k))

    def arch(self, d_vocab: int) -> dict[str, Any]:
        return {
            "n_layers": self.n_layers, "d_model": self.d_model, "d_head": self.d_model // self.n_heads,
            "n_heads": self.n_heads, "d_mlp": self.d_mlp, "d_vocab": d_vocab, "n_ctx": self.n_ctx,
            "act_fn": "gelu", "normalization_type": "LN", "positional_embedding_type": "standard",
            "attn_only": False, "default_prepend_bos": True, "n_key_value_heads": None, "rotary_dim": None,
            "gated_mlp": False, "original_architecture": None,
        }  # fmt: skip


class TokenStream:
    """Training / held-out sequences of the synthetic language: BOS + sentences, cut to n_ctx."""

    def __init__(self, tokenizer, language: SyntheticLanguage | None = None):
        self.language = language or SyntheticLanguage()
        self.backend = tokenizer.backend_tokenizer
        self.bos = tokenizer.bos_token_id

    def sequence(self, rng: random.Random, length: int) -> list[int]:
        ids = [self.bos]
        while len(ids) < length:
            ids += self.backend.encode(self.language.sentence(rng), add_special_tokens=False).ids
        return ids[:length]

    @classmethod
    def for_model(cls, model) -> "TokenStream":
        """Text of the language ``model`` was trained on, in its tokenizer."""
        if getattr(model, "tokenizer", None) is None:
            raise CircuitryError("this model has no tokenizer to read the synthetic language; give token ids as data (a .safetensors file)")
        return cls(model.tokenizer, SyntheticLanguage.of(model))

    def info(self) -> dict[str, Any]:
        """What the run read: the synthetic language and its non-default options."""
        return {"source": "synthetic", **self.language.options()}

    def sequences(self, key: str, size: int, length: int) -> Iterator[list[int]]:
        """The rows of :meth:`batch`, drawn one at a time."""
        rng = random.Random(key)
        return (self.sequence(rng, length) for _ in range(size))

    def batch(self, key: str, size: int, length: int) -> Int[Tensor, "batch pos"]:
        return torch.tensor(list(self.sequences(key, size, length)), dtype=torch.long)

    def train_batch(self, seed: int, step: int, size: int, length: int) -> Int[Tensor, "batch pos"]:
        return self.batch(f"train|{seed}|{step}", size, length)

    def heldout(self, size: int, length: int) -> Int[Tensor, "batch pos"]:
        """Held-out text: a seed namespace training never uses."""
        return self.batch("heldout|0", size, length)

    def heldout_sequences(self, size: int, length: int) -> Iterator[list[int]]:
        """The rows of :meth:`heldout`, one at a time (see :func:`circuitry.data.heldout_batches`)."""
        return self.sequences("heldout|0", size, length)


@torch.no_grad()
def heldout_ce(model, stream, n: int = 256, batch_size: int = 64, length: int | None = None) -> float:
    """Mean next-token cross-entropy (nats/token) on ``n`` held-out sequences of ``length`` (default n_ctx) tokens
    of ``stream`` (a token source, see :mod:`circuitry.data`; a short user text gives fewer sequences)."""
    from circuitry.data import heldout_batches

    total, count = 0.0, 0
    for chunk in heldout_batches(stream, n, length or model.cfg.n_ctx, batch_size)[0]:
        total += model(chunk, return_type="loss").item() * len(chunk)
        count += len(chunk)
    return total / count


def dropout_hooks(model, p: float) -> list[tuple[Any, Any]]:
    """Forward hooks applying GPT-2's dropout sites (embd / attn / resid pdrop) to a HookedTransformer.

    TransformerLens models have no dropout modules, so training-time dropout goes in through hook
    points: the embeddings entering block 0, every attention pattern (after the softmax) and every
    attention and MLP output before it joins the residual stream. Empty for ``p == 0``.
    """
    if p == 0:
        return []

    def drop(x: Tensor, hook) -> Tensor:
        return torch.nn.functional.dropout(x, p, training=True)

    sites = ("hook_pattern", "hook_attn_out", "hook_mlp_out")
    return [("blocks.0.hook_resid_pre", drop), (lambda name: name.endswith(sites), drop)]


def lr_at(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


@gradients("pretraining")
def pretrain(cfg: PretrainConfig, out: str | Path, resume: bool = False, name: str | None = None, progress: bool = True):
    """Train and write a model directory at ``out``; returns the model. Resumes from ``out``'s checkpoint.
    ``name``: the model's name in its meta.json, by default ``out``'s folder name."""
    out = Path(out)
    name = name or out.name
    ckpt = prepare_run_dir(out, resume, CHECKPOINT)
    from circuitry.zoo.tokenizer import build_tokenizer  # transformers is slow to import; the CLI reads PretrainConfig

    tokenizer = build_tokenizer()
    stream = TokenStream(tokenizer, cfg.language())
    model = build_model(cfg.arch(len(tokenizer)), tokenizer, seed=cfg.seed)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98),
    )  # fmt: skip
    torch.manual_seed(cfg.seed)  # dropout masks (restored from the checkpoint on resume), as sparsify and CLT training do
    hooks = dropout_hooks(model, cfg.dropout)
    start, elapsed = 0, 0.0
    if resume:
        start, state = resume_run(ckpt, model, opt, cfg)
        trim_log(out / LOG, start)
        elapsed = state.get("elapsed", 0.0)
    t0 = time.time() - elapsed
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"pretrain {name}", disable=not progress)
    with deterministic(), open(out / LOG, "a" if resume else "w") as log:
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            with model.hooks(fwd_hooks=hooks):
                loss = model(stream.train_batch(cfg.seed, step, cfg.batch_size, cfg.n_ctx), return_type="loss")
            if not torch.isfinite(loss):
                raise nonfinite_loss(step, ckpt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                bar.set_postfix(loss=f"{loss.item():.3f}")
                rec = {"step": step, "loss": round(loss.item(), 5), "lr": lr_at(cfg, step), "seconds": round(time.time() - t0, 1)}
                log.write(json.dumps(rec) + "\n")
                log.flush()
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                save_checkpoint(ckpt, model, opt, step + 1, {"config": asdict(cfg), "elapsed": time.time() - t0})
    opt.zero_grad(set_to_none=True)  # no stale gradients on the returned model
    model.eval()
    seconds = time.time() - t0
    ce = heldout_ce(model, stream, cfg.heldout_sequences)
    meta = {
        "name": name,
        "kind": "dense",
        "heldout_ce": round(ce, 5),
        "train_seconds": round(seconds, 1),
        "train_tokens": cfg.steps * cfg.batch_size * cfg.n_ctx,
        "pretrain_config": asdict(cfg),
        "command": f"circuitry zoo build --name {name} --out {out} --steps {cfg.steps} --seed {cfg.seed}{cfg.flags()}",
        "torch_threads": torch.get_num_threads(),
    }
    meta.update(cfg.language().options())  # a non-default language: later steps (sparsify, CLTs) read it back
    save_model(model, out, meta)
    ckpt.unlink(missing_ok=True)
    model.cfg.model_name = name
    return model
