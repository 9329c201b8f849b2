"""Artifacts on disk: safetensors + JSON only, written atomically, fingerprinted, checked on load.

Every tensor file carries a ``circuitry`` metadata entry (JSON) with the circuitry version, the
artifact kind, its config and the fingerprint of the model it belongs to. Never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from circuitry.errors import CircuitryError

FORMAT_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_out_dir(path: str | os.PathLike) -> Path:
    """Refuse, before any work is done, an empty name, an output directory that is an existing file or lies under
    one, and one whose nearest existing folder cannot hold a new folder (tried with a temporary one)."""
    if str(path).strip() == "":
        raise CircuitryError("the output directory is an empty name")
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise CircuitryError(f"cannot write to {path}: {p} is a file, not a directory")
            try:
                os.rmdir(tempfile.mkdtemp(prefix=".circuitry-check-", dir=p))
            except OSError as e:
                raise CircuitryError(f"cannot write to {path}: {e.strerror or e} in {p}") from None
            break
    return path


@contextmanager
def staged_output(out: str | os.PathLike) -> Iterator[Path]:
    """A fresh directory beside ``out`` to write a set of output files into (each still atomically). When the block
    ends without error every file is moved into ``out`` by a rename (replacing an older file of the same name);
    when it fails, none is. So a run that fails while writing its outputs leaves ``out`` as it was, not holding
    some of them."""
    out = check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield stage
        moves = [(p, out / p.relative_to(stage)) for p in sorted(stage.rglob("*")) if p.is_file()]
        for _, dest in moves:  # every obstacle is found before the first file moves
            check_out_dir(dest.parent)
            if dest.is_dir():
                raise CircuitryError(f"cannot write {dest}: it is a directory")
        for src, dest in moves:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


@contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Parse an artifact: the KeyError / TypeError / ValueError ... that a hand-edited, truncated or foreign file
    raises while its fields are read becomes one :class:`CircuitryError` naming the file."""
    try:
        yield
    except CircuitryError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, AssertionError) as e:
        raise CircuitryError(f"{path}: malformed or foreign file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def check_finite(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CircuitryError(f"{path} holds non-finite values (NaN or inf) in {bad[:3]}")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CircuitryError(f"missing file {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CircuitryError(f"cannot read {path}: not valid JSON ({e})") from None


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """A short sha256 over names, shapes, dtypes and bytes of ``tensors`` (order-independent)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # (reshape: 0-dim tensors too)
    return h.hexdigest()[:16]


def content_fingerprint(tensors: dict[str, torch.Tensor], meta: dict[str, Any], meta_key: str) -> str:
    """:func:`fingerprint` of the tensors and their JSON header together (``meta`` without the fingerprint itself
    and the version keys :func:`save_tensors` adds; hashed as a byte tensor named ``meta_key``): a flipped byte
    anywhere in the file is caught on load."""
    header = json.dumps({k: v for k, v in meta.items() if k not in ("fingerprint", "circuitry_version", "format_version")}, sort_keys=True)
    return fingerprint({**tensors, meta_key: torch.frombuffer(bytearray(header.encode()), dtype=torch.uint8)})


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically write ``tensors`` as safetensors with ``meta`` (JSON) in the header."""
    from circuitry import __version__

    header = {"circuitry_version": __version__, "format_version": FORMAT_VERSION, **meta}
    data = st_save(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        metadata={"circuitry": json.dumps(header, sort_keys=True)},
    )
    atomic_write_bytes(path, data)


def load_tensors(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors file written by :func:`save_tensors`; check its kind if given."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        tensors = st_load(raw)
        meta = _read_header_meta(raw)
    except FileNotFoundError:
        raise CircuitryError(f"missing file {path}") from None
    except (OSError, SafetensorError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CircuitryError(f"cannot read {path}: not a valid safetensors file ({e})") from None
    if kind is not None and meta.get("kind") != kind:
        raise CircuitryError(f"{path} holds a {meta.get('kind')!r} artifact, expected {kind!r}")
    check_format(meta, path)
    return tensors, meta


def check_format(record: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse an artifact written in a newer format than this circuitry reads (records without a version are 1)."""
    version = record.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise CircuitryError(f"{path} has artifact format {version!r} (circuitry {record.get('circuitry_version')!r}); "
                             f"this circuitry reads format {FORMAT_VERSION}")  # fmt: skip


def _read_header_meta(raw: bytes) -> dict[str, Any]:
    """The ``circuitry`` entry of a safetensors header (the format is an 8-byte length + JSON)."""
    if len(raw) < 8:
        raise ValueError("file too short")
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n].decode())
    entry = (header.get("__metadata__") or {}).get("circuitry")
    meta = json.loads(entry) if entry else {}
    if not isinstance(meta, dict):
        raise ValueError("the circuitry metadata entry is not a JSON object")
    return meta
