"""Transcoders on disk in circuit-tracer's layout, plus a circuitry record; SAELens export.

Cross-layer (``model_kind: cross_layer_transcoder``)::

    W_enc_{l}.safetensors   W_enc_{l} [F, d_model], b_enc_{l} [F], b_dec_{l} [d_model], threshold_{l} [F]
    W_dec_{l}.safetensors   W_dec_{l} [F, n_layers - l, d_model]

Per-layer (``model_kind: transcoder_set``)::

    layer_{l}.safetensors   W_enc [F, d_model], W_dec [F, d_model], b_enc, b_dec, activation_function.threshold

plus ``config.yaml`` (model_kind, feature_input_hook, feature_output_hook, model_name, scan) and
``circuitry.json`` (config, quality, model fingerprint, the command that trained it). Input/output scales are
folded into the weights, so the files are in raw activation units. Every safetensors header records the
circuitry version and the model fingerprint; loading checks both against the model given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from circuitry.artifacts import (
    atomic_write_bytes,
    atomic_write_json,
    check_finite,
    check_format,
    fingerprint,
    load_tensors,
    read_json,
    reading,
    save_tensors,
)
from circuitry.errors import CircuitryError
from circuitry.transcoders.clt import CLTConfig, CrossLayerTranscoder
from circuitry.zoo.registry import check_config_fingerprint, config_fingerprint, model_fingerprint

RECORD = "circuitry.json"


def export_tensors(clt: CrossLayerTranscoder) -> dict[str, dict[str, torch.Tensor]]:
    """File name -> tensors, in circuit-tracer's layout and raw units."""
    files: dict[str, dict[str, torch.Tensor]] = {}
    L = clt.cfg.n_layers
    for l in range(L):
        w_enc = clt.raw_encoder()[l].detach()
        w_dec = clt.raw_decoder(l).detach()
        if clt.cfg.cross_layer:
            files[f"W_enc_{l}.safetensors"] = {f"W_enc_{l}": w_enc, f"b_enc_{l}": clt.b_enc[l].detach(),
                                               f"b_dec_{l}": clt.b_dec[l].detach(), f"threshold_{l}": clt.threshold[l].detach()}  # fmt: skip
            files[f"W_dec_{l}.safetensors"] = {f"W_dec_{l}": w_dec}
        else:
            files[f"layer_{l}.safetensors"] = {"W_enc": w_enc, "W_dec": w_dec[:, 0], "b_enc": clt.b_enc[l].detach(),
                                               "b_dec": clt.b_dec[l].detach(), "activation_function.threshold": clt.threshold[l].detach()}  # fmt: skip
    return files


def scan_name(model_name: str, cfg: CLTConfig) -> str:
    """circuit-tracer's name of a transcoder set (config.yaml ``scan``, the graph JSON's ``metadata.scan``)."""
    return f"circuitry/{model_name}-{'clt' if cfg.cross_layer else 'plt'}"


def save_clt(clt: CrossLayerTranscoder, directory: str | Path, model, record: dict[str, Any] | None = None) -> str:
    """Write ``clt`` (trained on ``model``) to ``directory``; returns the transcoder fingerprint."""
    directory = Path(directory)
    files = export_tensors(clt)
    fp = fingerprint({f"{f}/{k}": v for f, ts in files.items() for k, v in ts.items()})
    meta = {"kind": "transcoder", "config": clt.cfg.to_dict(), "model_fingerprint": model_fingerprint(model),
            "model_config_fingerprint": config_fingerprint(model), "fingerprint": fp}
    for name, tensors in files.items():
        save_tensors(directory / name, tensors, meta)
    config = {
        "model_kind": "cross_layer_transcoder" if clt.cfg.cross_layer else "transcoder_set",
        "model_name": model.cfg.model_name,
        "scan": scan_name(model.cfg.model_name, clt.cfg),
        "feature_input_hook": clt.cfg.feature_input_hook,
        "feature_output_hook": clt.cfg.feature_output_hook,
    }
    atomic_write_bytes(directory / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
    atomic_write_json(directory / RECORD, {**(record or {}), **meta})
    return fp


def load_clt(directory: str | Path, model=None) -> CrossLayerTranscoder:
    """Load a transcoder directory; with ``model`` given, refuse one trained on a different model."""
    directory = Path(directory)
    if not (directory / "config.yaml").exists():
        raise CircuitryError(f"{directory} is not a transcoder directory (no config.yaml)")
    try:
        config = yaml.safe_load((directory / "config.yaml").read_text())
    except yaml.YAMLError as e:
        raise CircuitryError(f"{directory / 'config.yaml'}: not valid YAML ({e})") from None
    with reading(directory):  # a hand-edited record or config fails with one line naming the directory
        record = read_json(directory / RECORD)
        check_format(record, directory / RECORD)
        cross = config.get("model_kind") == "cross_layer_transcoder"
        cfg = CLTConfig(**record["config"])
        if cfg.cross_layer != cross:
            raise CircuitryError(f"{directory}: config.yaml model_kind disagrees with {RECORD}")
        files: dict[str, dict[str, torch.Tensor]] = {}
        for name in export_tensors(CrossLayerTranscoder(cfg)):
            tensors, meta = load_tensors(directory / name, kind="transcoder")
            if meta.get("fingerprint") != record["fingerprint"]:
                raise CircuitryError(f"{directory / name} belongs to a different transcoder than {RECORD}")
            for key in ("model_fingerprint", "model_config_fingerprint"):  # the header, not the editable record, says
                if meta.get(key) != record.get(key):
                    raise CircuitryError(f"{directory / RECORD}: {key.replace('_', ' ')} {record.get(key)} differs from the one "
                                         f"{name} was saved with ({meta.get(key)})")  # fmt: skip
            saved = meta.get("config") or {}  # the weights' own header keeps the config they were trained with
            if saved != record["config"]:
                changed = sorted(k for k in saved.keys() | record["config"].keys() if saved.get(k) != record["config"].get(k))
                raise CircuitryError(f"{directory / RECORD}: config differs from the one {name} was saved with ({', '.join(changed)})")
            check_finite(tensors, directory / name)
            files[name] = tensors
        for key in ("feature_input_hook", "feature_output_hook"):  # circuit-tracer reads the hooks from config.yaml
            if config.get(key) != getattr(cfg, key):
                raise CircuitryError(f"{directory}: config.yaml {key} {config.get(key)!r} disagrees with {RECORD} ({getattr(cfg, key)!r})")
        if fingerprint({f"{f}/{k}": v for f, ts in files.items() for k, v in ts.items()}) != record["fingerprint"]:
            raise CircuitryError(f"{directory}: transcoder weights do not match their fingerprint (corrupt or modified)")
        if model is not None and record["model_fingerprint"] != model_fingerprint(model):
            raise CircuitryError(f"{directory} was trained on a different model than {model.cfg.model_name} (fingerprint mismatch)")
        if model is not None:
            check_config_fingerprint(record.get("model_config_fingerprint"), model, f"{directory}")
            missing = [h for h in (cfg.feature_input_hook, cfg.feature_output_hook) if f"blocks.0.{h}" not in model.hook_dict]
            if missing:
                raise CircuitryError(f"{directory}: the model has no hook {missing[0]!r} (blocks.<layer>.{missing[0]})")
        clt = CrossLayerTranscoder(cfg)
        with torch.no_grad():
            for l in range(cfg.n_layers):
                if cross:
                    enc, dec = files[f"W_enc_{l}.safetensors"], files[f"W_dec_{l}.safetensors"]
                    w_enc, b_enc, b_dec, thr, w_dec = (enc[f"W_enc_{l}"], enc[f"b_enc_{l}"], enc[f"b_dec_{l}"],
                                                       enc[f"threshold_{l}"], dec[f"W_dec_{l}"])  # fmt: skip
                else:
                    t = files[f"layer_{l}.safetensors"]
                    w_enc, b_enc, b_dec, thr, w_dec = t["W_enc"], t["b_enc"], t["b_dec"], t["activation_function.threshold"], t["W_dec"][:, None]
                clt.W_enc[l].copy_(w_enc)
                clt.b_enc[l].copy_(b_enc)
                clt.b_dec[l].copy_(b_dec)
                clt.log_threshold[l].copy_(thr.log())
                clt.W_dec[l].copy_(w_dec)
    clt.eval()
    clt.record = record
    return clt


def to_sae_lens(clt: CrossLayerTranscoder) -> list:
    """Per-layer transcoders as SAELens ``JumpReLUTranscoder`` objects (only for ``cross_layer=False``). They give
    circuitry's features at every position but 0: circuitry zeroes BOS features (as circuit-tracer), SAELens does not."""
    from sae_lens import JumpReLUTranscoder, JumpReLUTranscoderConfig

    if clt.cfg.cross_layer:
        raise CircuitryError("a cross-layer transcoder has no SAELens class; train with cross_layer=False for per-layer ones")
    out = []
    for l, tensors in enumerate(export_tensors(clt).values()):
        cfg = JumpReLUTranscoderConfig(d_in=clt.cfg.d_model, d_sae=clt.cfg.d_transcoder, d_out=clt.cfg.d_model, dtype="float32",
                                       device="cpu", apply_b_dec_to_input=False)
        tc = JumpReLUTranscoder(cfg)
        with torch.no_grad():  # SAELens stores W_enc [d_in, d_sae]
            tc.W_enc.copy_(tensors["W_enc"].T)
            tc.W_dec.copy_(tensors["W_dec"])
            tc.b_enc.copy_(tensors["b_enc"])
            tc.b_dec.copy_(tensors["b_dec"])
            tc.threshold.copy_(tensors["activation_function.threshold"])
        tc.cfg.metadata.hook_name = f"blocks.{l}.{clt.cfg.feature_input_hook}"
        out.append(tc)
    return out
