"""On-disk cache of computed priors (flow, depth, masks), keyed by clip hash + estimator settings.

Layout: ``<root>/<kind>/<key>.npz`` where ``key`` is the sha256 of a canonical JSON of
``{"clip": clip_hash, "kind": kind, "settings": settings}``. ``settings`` should name the estimator and
everything that changes its output (estimators here expose ``settings()`` for that); it must be
JSON-serialisable (dicts, lists, tuples, str, int, float, bool, None, numpy scalars/arrays, dataclasses,
paths). Each file also stores its own key JSON, checked on read.

Files are written atomically (a temporary file in the same folder, then ``os.replace``), so readers see the
old entry or the new one, never half a file. A corrupt, truncated or foreign entry is treated as a miss
(and removed), never as an error; a cache that cannot be written only logs a warning.

Root: ``$RECON4D_CACHE_DIR/priors`` when that variable is set, else ``~/.cache/recon4d/priors``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from recon4d.errors import PriorError
from recon4d.io.atomic import atomic_path

__all__ = ["CACHE_ENV_VAR", "CACHE_FORMAT", "PriorCache", "default_cache_root", "canonical_json", "cache_key"]

log = logging.getLogger(__name__)

#: Environment variable that moves the cache (priors go to its ``priors`` subfolder).
CACHE_ENV_VAR = "RECON4D_CACHE_DIR"
#: Bumped when the file layout changes; part of every key, so old entries simply stop matching.
CACHE_FORMAT = "recon4d-prior-cache/1"
# Name of the array inside each .npz that holds the entry's key JSON (as uint8 bytes, no pickling).
_KEY_ARRAY = "__recon4d_cache_key__"
# kind names become folder names.
_KIND_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def default_cache_root() -> Path:
    """``$RECON4D_CACHE_DIR/priors`` if set (and non-empty), else ``~/.cache/recon4d/priors``."""
    override = os.environ.get(CACHE_ENV_VAR)
    base = Path(override).expanduser() if override else Path.home() / ".cache" / "recon4d"
    return base / "priors"


def _jsonable(value: Any) -> Any:
    """Convert settings to plain JSON types; raise TypeError on anything else."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"settings keys must be strings, got {key!r}")
            out[key] = _jsonable(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.dtype.str, "shape": list(value.shape), "data": _jsonable(value.tolist())}
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float):
        if not np.isfinite(value):
            return repr(value)  # JSON has no inf/nan; their repr is stable
        return value
    if value is None or isinstance(value, (str, int, bool)):
        return value
    raise TypeError(f"cannot put {type(value).__name__} into a cache key")


def canonical_json(value: Any) -> str:
    """Deterministic JSON text of `value` (sorted keys, no whitespace, tuples as lists)."""
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def cache_key(kind: str, clip_hash: str, settings: Mapping[str, Any]) -> tuple[str, str]:
    """(sha256 hex digest, key JSON) of one cache entry."""
    try:
        text = canonical_json({"format": CACHE_FORMAT, "kind": kind, "clip": clip_hash, "settings": settings})
    except TypeError as error:
        raise PriorError(
            f"prior settings cannot be hashed: {error}", hint="use plain numbers, strings, lists and dicts"
        ) from error
    return hashlib.sha256(text.encode("ascii")).hexdigest(), text


class PriorCache:
    """Disk cache of prior arrays. ``get`` returns a dict of arrays or None; ``put`` stores one."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()

    def path(self, kind: str, clip_hash: str, settings: Mapping[str, Any]) -> Path:
        """File of the entry (whether or not it exists)."""
        if not isinstance(kind, str) or not _KIND_PATTERN.match(kind):
            raise PriorError(f"bad prior cache kind {kind!r}", hint="use a short name such as 'flow' or 'depth'")
        if not isinstance(clip_hash, str) or not clip_hash:
            raise PriorError("prior cache needs a non-empty clip hash", hint="use Clip.source_hash")
        digest, _ = cache_key(kind, clip_hash, settings)
        return self.root / kind / f"{digest}.npz"

    def get(self, kind: str, clip_hash: str, settings: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """The stored arrays, or None on a miss. A corrupt or mismatching entry is removed and is a miss."""
        path = self.path(kind, clip_hash, settings)
        if not path.is_file():
            return None
        _, expected_key = cache_key(kind, clip_hash, settings)
        try:
            with np.load(path, allow_pickle=False) as data:
                stored_key = bytes(data[_KEY_ARRAY]).decode("ascii") if _KEY_ARRAY in data.files else None
                if stored_key != expected_key:
                    raise ValueError("key mismatch")
                arrays = {name: data[name] for name in data.files if name != _KEY_ARRAY}
        except Exception as error:  # noqa: BLE001 - any unreadable entry (bad zip, CRC, pickle refusal, ...) is a miss
            log.warning("ignoring unreadable prior cache entry %s (%s)", path, error)
            try:
                path.unlink()
            except OSError:
                pass
            return None
        return arrays

    def put(self, kind: str, clip_hash: str, settings: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bool:
        """Store `arrays` (names must be identifiers; no object arrays) atomically. Returns False (and logs a
        warning) when the cache cannot be written; bad names or arrays raise PriorError."""
        path = self.path(kind, clip_hash, settings)
        _, key_json = cache_key(kind, clip_hash, settings)
        payload: dict[str, np.ndarray] = {}
        for name, array in arrays.items():
            if not isinstance(name, str) or not _NAME_PATTERN.match(name) or name == _KEY_ARRAY:
                raise PriorError(f"bad prior cache array name {name!r}", hint="use identifiers such as 'flow_forward'")
            array = np.asarray(array)
            if array.dtype == object:
                raise PriorError(f"prior cache array {name!r} has dtype object", hint="store numeric or bool arrays")
            payload[name] = array
        payload[_KEY_ARRAY] = np.frombuffer(key_json.encode("ascii"), dtype=np.uint8)
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as handle:  # a file object, so numpy does not append ".npz" to the name
                    np.savez(handle, **payload)
                    handle.flush()
                    os.fsync(handle.fileno())
        except OSError as error:
            log.warning("cannot write prior cache entry %s (%s)", path, error)
            return False
        return True
