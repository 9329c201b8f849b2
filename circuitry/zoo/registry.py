"""Load and save models: zoo names, local circuitry model directories, TransformerLens names.

A circuitry model directory holds ``config.json`` (HookedTransformerConfig fields),
``model.safetensors`` (weights, fingerprint in the header), the tokenizer files and ``meta.json``
(how it was made and what it scored).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import torch

from circuitry.artifacts import atomic_write_json, check_finite, fingerprint, load_tensors, read_json, reading, save_tensors
from circuitry.errors import CircuitryError
from circuitry.zoo.language import LANGUAGE_OPTIONS, SyntheticLanguage

ZOO_DIR = Path(__file__).parent / "models"
ARCH_KEYS = (
    "n_layers", "d_model", "d_head", "n_heads", "d_mlp", "d_vocab", "n_ctx", "act_fn", "normalization_type",
    "positional_embedding_type", "attn_only", "default_prepend_bos", "n_key_value_heads", "rotary_dim",
    "gated_mlp", "original_architecture",
)  # fmt: skip


# HookedTransformerConfig fields that do not describe the function the weights compute: where it runs, names,
# hook switches (circuitry sets them while it works), initialisation, quantised loading, derived counts
RUNTIME_FIELDS = {
    "device", "n_devices", "seed", "model_name", "tokenizer_name", "use_attn_result", "use_split_qkv_input",
    "use_hook_mlp_in", "use_attn_in", "use_hook_tokens", "from_checkpoint", "checkpoint_index", "checkpoint_label_type",
    "checkpoint_value", "n_params", "init_mode", "initializer_range", "init_weights", "trust_remote_code",
    "load_in_4bit", "quantization_method", "tokenizer_prepends_bos",
}  # fmt: skip


def _quiet_tl():
    warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
    import transformer_lens

    return transformer_lens


def zoo_models() -> list[str]:
    """Names of the models shipped inside the package."""
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "model.safetensors").is_file()) if ZOO_DIR.is_dir() else []


def list_models() -> list[dict[str, Any]]:
    """Zoo models with their recorded metadata (no weights are loaded)."""
    out = []
    for name in zoo_models():
        meta = read_json(ZOO_DIR / name / "meta.json") if (ZOO_DIR / name / "meta.json").is_file() else {}
        out.append({"name": name, "path": str(ZOO_DIR / name), **meta})
    return out


def model_fingerprint(model) -> str:
    """Which model an artifact (a CLT) belongs to: the weights' fingerprint at float32, so the same model moved to
    float64 (for precise attribution) still matches; a model whose float32 values differ does not."""
    return fingerprint({k: v.float() if v.dtype == torch.float64 else v for k, v in _weights(model).items()})


def config_fingerprint(model) -> str | None:
    """What the weights compute with: a short sha256 of :func:`model_config` (without the dtype, which
    :func:`model_fingerprint` ignores too) and the gates' options. Artifacts record it beside the weights'
    fingerprint, so the same weights under another config (activation, parallel blocks, ...) are not taken for the
    same model. None for a config that JSON cannot record (then only the weights are compared)."""
    try:
        config = {k: v for k, v in recorded_config(model).items() if k != "dtype"}
    except CircuitryError:
        return None
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def check_config_fingerprint(recorded: str | None, model, what: str) -> None:
    """Refuse ``model`` when an artifact (``what``) records another :func:`config_fingerprint` (artifacts written
    before circuitry recorded it have none: their weights' fingerprint is all that is compared)."""
    now = config_fingerprint(model)
    if recorded is not None and now is not None and recorded != now:
        raise CircuitryError(f"{what} was made on a model with the same weights but another config (config fingerprint "
                             f"{recorded}, this model's {now}: e.g. another activation function)")  # fmt: skip


def _weights(model) -> dict[str, torch.Tensor]:
    """Parameters only (TransformerLens' buffers - masks, rotary tables - are rebuilt from the config)."""
    return {k: v for k, v in model.named_parameters()}


def model_config(model) -> dict[str, Any]:
    """The config a model directory records: the ARCH_KEYS, plus every other HookedTransformerConfig field (not in
    RUNTIME_FIELDS) whose value differs from what the ARCH_KEYS alone build (e.g. rotary_base, parallel_attn_mlp,
    eps, a float64 dtype), so that loading rebuilds the same function."""
    import dataclasses

    tl = _quiet_tl()
    config = {k: getattr(model.cfg, k) for k in ARCH_KEYS}
    base = tl.HookedTransformerConfig(**config, device="cpu", seed=None)
    for f in dataclasses.fields(tl.HookedTransformerConfig):
        if not f.init or f.name in config or f.name in RUNTIME_FIELDS:
            continue
        value = getattr(model.cfg, f.name)
        if value == getattr(base, f.name):
            continue
        if f.name == "dtype":
            value = str(value).removeprefix("torch.")
        elif not _jsonable(value):
            raise CircuitryError(f"cannot record the model config field {f.name} = {value!r} in JSON")
        config[f.name] = value
    return config


def recorded_config(model) -> dict[str, Any]:
    """What a model directory's ``config.json`` holds: :func:`model_config` and, on a gated model, the gates'
    options."""
    config = model_config(model)
    gates = getattr(model, "gates", None)
    if gates is not None:
        config["gates"] = {"renormalise": gates.renormalise}
    return config


def _jsonable(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return value is None or isinstance(value, (str, int, float, bool))


def save_model(model, directory: str | Path, meta: dict[str, Any] | None = None) -> str:
    """Write a circuitry model directory; returns the weights fingerprint."""
    from circuitry.zoo.tokenizer import save_tokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = recorded_config(model)
    weights = _weights(model)
    fp = fingerprint(weights)
    save_tensors(directory / "model.safetensors", weights, {"kind": "model", "fingerprint": fp, "config": config})
    atomic_write_json(directory / "config.json", config)
    if model.tokenizer is not None:
        save_tokenizer(model.tokenizer, directory)
    from circuitry import __version__

    kept = _provenance(getattr(model, "circuitry_info", {}))  # a copy keeps its language and parent (what tasks and compare read)
    atomic_write_json(directory / "meta.json", {**kept, **(meta or {}), "circuitry_version": __version__, "fingerprint": fp})
    return fp


def build_model(config: dict[str, Any], tokenizer=None, seed: int | None = None):
    """A freshly initialised HookedTransformer (global RNG untouched) from architecture fields."""
    tl = _quiet_tl()
    arch = {k: v for k, v in config.items() if k != "gates"}
    if isinstance(arch.get("dtype"), str):  # recorded by model_config as its name
        arch["dtype"] = getattr(torch, arch["dtype"])
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        cfg = tl.HookedTransformerConfig(**arch, device="cpu", seed=None)
        model = tl.HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    if "gates" in config:  # a sparse model: gates on, deterministic (eval mode)
        from circuitry.sparsity.gates import attach_gates

        attach_gates(model, mode="eval", renormalise=bool(config["gates"].get("renormalise", False)))
    return model


def load_model_dir(directory: str | Path, name: str | None = None):
    """Load a circuitry model directory, checking the weights against config and fingerprint."""
    from circuitry.zoo.tokenizer import load_tokenizer

    directory = Path(directory)
    config = read_json(directory / "config.json")
    tensors, meta = load_tensors(directory / "model.safetensors", kind="model")
    if fingerprint(tensors) != meta.get("fingerprint"):
        raise CircuitryError(f"{directory / 'model.safetensors'} does not match its recorded fingerprint (corrupt or modified)")
    if meta.get("config") != config:
        raise CircuitryError(f"{directory}: config.json does not match the config recorded with the weights")
    check_finite(tensors, directory / "model.safetensors")
    tokenizer = load_tokenizer(directory) if (directory / "tokenizer.json").exists() else None
    try:
        model = build_model(config, tokenizer)
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except (RuntimeError, TypeError, ValueError, AssertionError) as e:  # TransformerLens asserts on bad config values
        raise CircuitryError(f"{directory}: weights do not fit config.json ({str(e).splitlines()[0]})") from None
    params = dict(model.named_parameters())
    missing = [k for k in missing if k in params]  # buffers (masks, rotary tables) are rebuilt from the config
    if missing or unexpected:
        raise CircuitryError(f"{directory}: weights do not fit config.json (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    model.cfg.model_name = name or directory.name
    model.circuitry_info = {"name": model.cfg.model_name, "path": str(directory), "fingerprint": meta["fingerprint"],
                            **_about(directory / "meta.json", meta["fingerprint"])}  # fmt: skip
    return model


def _provenance(record: dict[str, Any]) -> dict[str, Any]:
    """The entries of a model record that say how the model was made: its language options and its parent."""
    return {k: record[k] for k in (*LANGUAGE_OPTIONS, "parent") if k in record}


def _about(path: Path, weights_fingerprint: str) -> dict[str, Any]:
    """What ``meta.json`` (optional) says about how the model was made: its language options and parent, checked to
    describe these weights and to be a language the generator accepts."""
    if not path.exists():
        return {}
    about = read_json(path)
    with reading(path):
        if not isinstance(about, dict):
            raise CircuitryError(f"{path} must be a JSON object (how the model was made)")
        if about.get("fingerprint", weights_fingerprint) != weights_fingerprint:
            raise CircuitryError(f"{path} describes other weights (fingerprint {about['fingerprint']}, the weights' {weights_fingerprint})")
        kept = _provenance(about)
        SyntheticLanguage(**{k: v for k, v in kept.items() if k != "parent"})  # its checks, naming this file if they fail
    return kept


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_transformerlens(name: str, device: str):
    tl = _quiet_tl()
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        official = get_official_model_name(name)
    except ValueError:
        raise CircuitryError(
            f"unknown model {name!r}: not a zoo model ({', '.join(zoo_models()) or 'none installed'}), "
            "a circuitry model directory, or a TransformerLens model name"
        ) from None
    if not hub_reachable():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(official, "config.json"), str):
            raise CircuitryError(
                f"cannot load {name!r}: the model hub is unreachable (offline) and it is not cached; "
                f"models available offline: {', '.join(zoo_models())}"
            )
    try:
        model = tl.HookedTransformer.from_pretrained(official, device=device)
    except Exception as e:  # network, auth and conversion errors all surface as one line
        raise CircuitryError(f"cannot load {name!r} through TransformerLens: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    model.circuitry_info = {"name": name, "path": None, "fingerprint": model_fingerprint(model)}
    return model


def load_model(name: str, device: str = "cpu"):
    """A HookedTransformer by zoo name (offline), local model directory, or TransformerLens name.

    Zoo and local models come back in eval mode on CPU with their tokenizer attached.
    """
    if not name or not str(name).strip():
        raise CircuitryError("empty model name")
    if name in zoo_models():
        if (Path(name) / "config.json").is_file():
            warnings.warn(f"{name!r} is a zoo model and a model directory here; loading the zoo model (give ./{name} for the directory)", stacklevel=2)
        model = load_model_dir(ZOO_DIR / name, name)
    elif Path(name).is_dir() and (Path(name) / "config.json").is_file():
        model = load_model_dir(Path(name))
    elif Path(name).exists():
        raise CircuitryError(f"{name} is not a circuitry model directory (needs config.json and model.safetensors)")
    else:
        return _load_transformerlens(name, device)
    return model.to(device) if device != "cpu" else model
