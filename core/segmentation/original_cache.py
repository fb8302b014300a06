"""A persistent on-disk cache of original-network segmentations, so that reopening a CT shows its originals at once.

Why: the original side of every comparison is the expensive one (five full TS experts take minutes on a CPU) and
it never changes for a given CT, model and set of inference options. Entries are keyed by the CT's content
(voxels, affine), the model's content (checkpoint bytes, plans, dataset.json, configuration), the inference
options and recipe, and the versions of the code that computes them, so a changed input never hits a stale
entry. Each entry is one .npy file written to a temporary name and renamed into place: a reader sees either a
whole entry or none, and an entry that fails to load (disk trouble) counts as a miss and is removed. The folder
is capped in size; the least recently used entries go first.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from tuckerscope.core.models.model_folder import LoadedExpert
from tuckerscope.core.runtime.locations import cache_dir

DEFAULT_MAX_BYTES = 4 * 1024**3
# Bump when the segmenter's output for the same inputs could change: every older entry then misses.
PIPELINE_VERSION = 1
_ENTRY_SUFFIX = ".npy"
_HASH_CHUNK = 16 * 1024**2
_MODEL_HASHES = "model_hashes.json"


def default_cache_folder() -> Path:
    """``originals`` in the platform's per-user cache folder (core.runtime.locations, via platformdirs)."""
    return cache_dir() / "originals"


def volume_content_hash(data: np.ndarray, affine: np.ndarray) -> str:
    """SHA-256 of a CT's voxels (values, shape, dtype) and affine: equal CTs hash alike wherever they came from."""
    digest = hashlib.sha256()
    array = np.ascontiguousarray(data)
    digest.update(json.dumps([list(array.shape), array.dtype.str]).encode())
    digest.update(np.asarray(affine, dtype=np.float64).tobytes())
    flat = array.reshape(-1).view(np.uint8)
    for start in range(0, flat.size, _HASH_CHUNK):
        digest.update(flat[start : start + _HASH_CHUNK])
    return digest.hexdigest()


def model_content_hash(expert: LoadedExpert) -> str:
    """SHA-256 of the expert's checkpoint file, plans, dataset.json and configuration."""
    digest = hashlib.sha256()
    described = [expert.plans, expert.dataset_json, expert.spec.configuration]
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    with Path(expert.spec.checkpoint).open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    versions = {"pipeline": str(PIPELINE_VERSION)}
    for package in ("torch", "nnunetv2", "TotalSegmentator"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "none"
    return versions


class OriginalCache:
    """Original segmentations on disk, keyed by CT, model and options; at most ``max_bytes`` in all."""

    def __init__(self, folder: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_folder()
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._model_hashes: dict[str, str] = {}

    def model_hash(self, expert: LoadedExpert) -> str:
        """model_content_hash, remembered per checkpoint file state (path, size, mtime) in memory and in the
        cache folder: hashing five TS checkpoints takes seconds, too long for "reopen -> originals at once"."""
        checkpoint = Path(expert.spec.checkpoint).resolve()
        stat = checkpoint.stat()
        memo = f"{checkpoint}|{stat.st_size}|{stat.st_mtime_ns}|{expert.spec.configuration}"
        with self._lock:
            if memo in self._model_hashes:
                return self._model_hashes[memo]
            stored = self._read_model_hashes()
        value = stored.get(memo) or model_content_hash(expert)
        with self._lock:
            self._model_hashes[memo] = value
            if memo not in stored:
                stored = self._read_model_hashes()
                stored[memo] = value
                self._write_atomically(self.folder / _MODEL_HASHES, json.dumps(stored, indent=1).encode())
        return value

    def key(self, volume_hash: str, model_hash: str, options: Any) -> str:
        """The entry name for one (CT, model, options) triple; ``options`` is anything JSON or repr renders
        stably (the segmenter passes its recipe and InferenceOptions.cache_key())."""
        text = json.dumps(
            {"volume": volume_hash, "model": model_hash, "options": repr(options), "versions": _versions()},
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The stored labels, or None (no entry, an unreadable one, or one of another shape)."""
        path = self._path(key)
        try:
            labels = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)
            return None
        if shape is not None and tuple(labels.shape) != tuple(shape):
            return None
        try:
            os.utime(path)  # least recently used goes first when the cap is reached
        except OSError:
            pass
        return labels

    def put(self, key: str, labels: np.ndarray) -> bool:
        """Store ``labels`` atomically, then trim to the size cap; False when it is larger than the cap itself."""
        array = np.ascontiguousarray(labels)
        if array.nbytes > self.max_bytes:
            return False
        self._write_atomically(self._path(key), array)
        self._trim()
        return True

    def clear(self) -> int:
        """Remove every entry (and any half-written leftover); returns how many files were removed."""
        removed = 0
        if not self.folder.is_dir():
            return 0
        for path in self.folder.iterdir():
            if (path.suffix in (_ENTRY_SUFFIX, ".part") or path.name == _MODEL_HASHES) and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def size_bytes(self) -> int:
        """Bytes held by complete entries."""
        return sum(size for _, size, _ in self._entries())

    def _write_atomically(self, path: Path, content: np.ndarray | bytes) -> None:
        """Write to a temporary file beside ``path``, flush it to disk, then rename it over ``path``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as stream:
                if isinstance(content, bytes):
                    stream.write(content)
                else:
                    np.save(stream, content, allow_pickle=False)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def _read_model_hashes(self) -> dict[str, str]:
        try:
            stored = json.loads((self.folder / _MODEL_HASHES).read_text())
        except (OSError, ValueError):
            return {}
        return stored if isinstance(stored, dict) else {}

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}{_ENTRY_SUFFIX}"

    def _entries(self) -> list[tuple[Path, int, float]]:
        if not self.folder.is_dir():
            return []
        entries = []
        for path in self.folder.glob(f"*{_ENTRY_SUFFIX}"):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((path, stat.st_size, stat.st_mtime))
        return entries

    def _trim(self) -> None:
        with self._lock:
            entries = sorted(self._entries(), key=lambda entry: entry[2])
            total = sum(size for _, size, _ in entries)
            for path, size, _ in entries:
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
