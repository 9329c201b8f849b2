"""Cross-layer transcoders (and per-layer ones): model, training, quality, circuit-tracer layout, SAELens export."""

from __future__ import annotations

from pathlib import Path

from circuitry.data import token_source
from circuitry.errors import CircuitryError
from circuitry.transcoders.clt import CLTConfig, CrossLayerTranscoder
from circuitry.transcoders.io import load_clt, save_clt, to_sae_lens
from circuitry.transcoders.quality import CLTQuality, evaluate_clt
from circuitry.transcoders.train import CHECKPOINT, CLTTrainConfig, train_clt

__all__ = [
    "CLTConfig", "CrossLayerTranscoder", "CLTTrainConfig", "train_clt", "CLTQuality", "evaluate_clt",
    "save_clt", "load_clt", "to_sae_lens", "train_and_save", "default_clt",
]  # fmt: skip


def train_and_save(model, out: str | Path, cfg: CLTTrainConfig, resume: bool = False, command: str = "", progress: bool = True, data=None):
    """Train, measure quality on 256 held-out sequences, write ``out`` (circuit-tracer layout), drop the checkpoint.
    ``data``: as for :func:`train_clt` (quality is measured on its held-out part).
    Under ``torchrun`` all ranks train; rank 0 alone evaluates and writes (the others return quality None)."""
    from circuitry.distributed import barrier, is_main

    data = token_source(model, data)  # a file is read once, for training and quality
    clt, info = train_clt(model, out, cfg, resume=resume, progress=progress, data=data)
    if not is_main():
        barrier()
        return clt, None
    quality = evaluate_clt(model, clt, seq_len=cfg.seq_len, data=data, progress=None if progress else False)
    save_clt(clt, out, model, {**info, "quality": quality.to_dict(), "model": model.cfg.model_name, "command": command})
    (Path(out) / CHECKPOINT).unlink(missing_ok=True)
    barrier()
    return clt, quality


def default_clt(model) -> CrossLayerTranscoder:
    """The transcoder shipped with a zoo model (``<model dir>/clt``)."""
    info = getattr(model, "circuitry_info", None)
    path = Path(info["path"]) / "clt" if info else None
    if path is None or not (path / "config.yaml").exists():
        raise CircuitryError(f"model {model.cfg.model_name} has no shipped transcoder; train one with `circuitry clt train` "
                             "and pass its directory (--clt, or --dense-clt / --sparse-clt for compare-graphs)")
    return load_clt(path, model)
