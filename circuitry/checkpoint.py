"""Training checkpoints in one safetensors file: weights, optimiser state, RNG state, step, extras.

Written atomically (temp file + rename), so a kill at any moment leaves the previous checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from circuitry.artifacts import atomic_write_bytes, check_finite, check_out_dir, content_fingerprint, load_tensors, reading, save_tensors
from circuitry.errors import CircuitryError


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    state: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> None:
    """``state`` is JSON-able run state (config, λ, counters); ``tensors`` any extra tensors."""
    out = {f"model.{k}": v for k, v in _trainable(model).items()}  # frozen weights (LoRA bases) are not saved
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                out[f"optim.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    out["rng.torch"] = torch.get_rng_state()
    out.update({f"extra.{k}": v for k, v in (tensors or {}).items()})
    meta = {
        "kind": "checkpoint",
        "step": step,
        "state": state or {},
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
    }
    save_tensors(path, out, {**meta, "fingerprint": content_fingerprint(out, meta, "checkpoint.meta")})


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, dict[str, Any], dict[str, torch.Tensor]]:
    """Restore model, optimiser and torch RNG in place; returns (step, state, extra tensors)."""
    with reading(path):  # a hand-edited or foreign checkpoint fails with one line
        tensors, meta = load_tensors(path, kind="checkpoint")
        if "fingerprint" in meta and content_fingerprint(tensors, meta, "checkpoint.meta") != meta["fingerprint"]:  # (older checkpoints have none)
            raise CircuitryError(f"checkpoint {path} does not match its recorded fingerprint (corrupt or modified)")
        check_finite(tensors, path)
        step, state_out = int(meta["step"]), json.loads(json.dumps(meta["state"]))  # checked before anything changes
        if not isinstance(state_out, dict) or "rng.torch" not in tensors or not isinstance(meta["optimizer"], dict):
            raise KeyError("step, state, optimizer or rng.torch")
        weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        params = _trainable(model)
        if set(weights) != set(params) or any(weights[k].shape != params[k].shape for k in params):
            raise CircuitryError(f"checkpoint {path} does not fit this model (different architecture)")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(weights[k])
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        for pid, sc in meta["optimizer"]["scalars"].items():
            state.setdefault(int(pid), {}).update(sc)
        try:
            optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
        except (ValueError, KeyError) as e:
            raise CircuitryError(f"checkpoint {path}: optimiser state does not fit ({e})") from None
        torch.set_rng_state(tensors["rng.torch"])
        extra = {k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")}
    return step, state_out, extra


def prepare_run_dir(out: str | Path, resume: bool, name: str = "checkpoint.safetensors") -> Path:
    """Check ``out`` for a new or resumed training run; returns the checkpoint path inside it."""
    out = check_out_dir(out)
    ckpt = out / name
    if ckpt.exists() and not resume:
        raise CircuitryError(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
    if resume and not ckpt.exists():
        finished = (out / "model.safetensors").exists() or (out / "circuitry.json").exists()  # a model or a transcoder
        raise CircuitryError(f"nothing to resume: no {ckpt}" + (f" ({out} holds a finished run)"
                                                                 if finished else ""))  # fmt: skip
    if not resume and (out / "model.safetensors").exists():
        raise CircuitryError(f"{out} already holds a model; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return ckpt


def nonfinite_loss(step: int, ckpt: Path, what: str = "loss") -> CircuitryError:
    """The error that stops a run whose loss became NaN or infinite: it names the checkpoint to resume from only
    when one was written (none is, before the first checkpoint interval)."""
    kept = f"last good checkpoint kept at {ckpt}" if ckpt.exists() else f"no checkpoint was written before it (nothing in {ckpt.parent} to resume)"  # fmt: skip
    return CircuitryError(f"non-finite {what} at step {step}; {kept}")


def resume_run(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Any,
               source: str | None = None) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """Restore a run from its checkpoint, refusing one made with a different config (a dataclass) or, when
    ``source`` is given (the fingerprint of the model the run starts from or reads), one made from another model.

    A checkpoint written before an option existed lacks its key; it counts as made with that option's default, so
    a run interrupted across an upgrade resumes when the option is left at its default.
    """
    step, state, _ = load_checkpoint(path, model, optimizer)
    config = dataclasses.asdict(cfg)
    saved = state.get("config")
    if isinstance(saved, dict):
        defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
        saved = {**{k: defaults[k] for k in config.keys() - saved.keys() if k in defaults}, **saved}
    if saved != config:
        raise CircuitryError(f"{path} was made with a different config; rerun with the same options")
    made_from = state.get("source_model")  # (older checkpoints do not record it)
    if source is not None and made_from is not None and made_from != source:
        raise CircuitryError(f"{path} was made from another model (fingerprint {made_from}; this one {source}); "
                             "rerun with the same --model")  # fmt: skip
    return step, state


def trim_log(path: str | Path, start: int) -> None:
    """Drop JSONL log records from steps at or after ``start`` (written after the checkpoint a
    killed run resumes from), so the resumed log has each step once."""
    path = Path(path)
    if not path.exists():
        return
    with reading(path):
        keep = [line for line in path.read_text().splitlines() if line.strip() and int(json.loads(line)["step"]) < start]
    atomic_write_bytes(path, "".join(line + "\n" for line in keep).encode())


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {k: p for k, p in model.named_parameters() if p.requires_grad}
