"""Content keys of data files: a hash of their bytes, cached per file.

`file_keys` gives the blake2b digest (16 bytes, hex) of each file's bytes, cached by the file's
identity `(resolved path, mtime_ns, size, inode)` in memory and optionally in a JSON file
(`cache`) shared between runs; a changed identity recomputes the digest once. `content_key`
combines the digests in order (not the paths, so moving a data root keeps its key).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from pdeinf.errors import InputError

BLOCK_BYTES = 1 << 20  # 1 MiB
DIGEST_BYTES = 16
CACHE_VERSION = 1

#: In-process caches: identity tuple -> hex digest, and (digest, tag) pairs.
_MEMORY: dict[tuple, str] = {}
_MEMORY_TAGS: set[tuple[str, str]] = set()


def hash_file(path: str | os.PathLike) -> str:
    """blake2b hex digest of the file's bytes, streamed in 1 MiB blocks (no cache)."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    try:
        with open(path, "rb") as handle:
            while block := handle.read(BLOCK_BYTES):
                digest.update(block)
    except OSError as err:
        raise InputError(f"{path}: cannot read data file ({err.strerror or err})") from None
    return digest.hexdigest()


def _load_payload(cache: Path) -> dict:
    """`{"files": {path: {"identity", "digest"}}, "tags": {digest: [tag, ...]}}`."""
    try:
        payload = json.loads(cache.read_text())
    except (OSError, ValueError):  # missing or damaged: start afresh (it is only a cache)
        payload = {}
    if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
        payload = {}
    for section in ("files", "tags"):
        if not isinstance(payload.get(section), dict):
            payload[section] = {}
    return payload


def _save_payload(cache: Path, payload: dict) -> None:
    from pdeinf.atomic import write_json

    try:
        write_json(cache, {**payload, "version": CACHE_VERSION})
    except OSError:  # a read-only location only costs a rehash next time
        pass


def has_tag(key: str, tag: str, cache: str | os.PathLike | None = None) -> bool:
    """Whether content `key` was marked with `tag` in this process or in the `cache` file."""
    if (key, tag) in _MEMORY_TAGS:
        return True
    if cache is not None and tag in _load_payload(Path(cache))["tags"].get(key, []):
        _MEMORY_TAGS.add((key, tag))
        return True
    return False


def add_tag(key: str, tag: str, cache: str | os.PathLike | None = None) -> None:
    """Mark content `key` with `tag`, in memory and in the `cache` file if given."""
    _MEMORY_TAGS.add((key, tag))
    if cache is not None:
        payload = _load_payload(Path(cache))
        tags = payload["tags"].setdefault(key, [])
        if tag not in tags:
            tags.append(tag)
            _save_payload(Path(cache), payload)


def file_keys(paths: Iterable[str | os.PathLike], cache: str | os.PathLike | None = None) -> list[str]:
    """The content digest of each file, in order (cached, see the module docstring)."""
    identities = []
    for path in map(Path, paths):
        try:
            stat = path.stat()
        except OSError as err:
            raise InputError(f"{path}: cannot stat data file ({err.strerror or err})") from None
        if not path.is_file():
            raise InputError(f"{path}: not a regular file")
        identities.append((str(path.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino))
    cache = Path(cache) if cache is not None else None
    stored = _load_payload(cache)["files"] if cache is not None else {}
    changed = False
    keys = []
    for identity in identities:
        key = _MEMORY.get(identity)
        record = {"identity": list(identity[1:])}
        found = stored.get(identity[0])
        if key is None and isinstance(found, dict) and found.get("identity") == record["identity"]:
            key = found.get("digest")
        if not isinstance(key, str):
            key = hash_file(identity[0])
        _MEMORY[identity] = key
        record["digest"] = key
        if cache is not None and found != record:
            stored[identity[0]] = record
            changed = True
        keys.append(key)
    if changed:  # reread: keep the tags another call may have written
        _save_payload(cache, {**_load_payload(cache), "files": stored})
    return keys


def content_key(paths: Iterable[str | os.PathLike], cache: str | os.PathLike | None = None) -> str:
    """One hex key for the bytes of `paths` in order (file digests combined with blake2b).
    Editing any byte of any file changes it; renaming or moving the files does not."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for key in file_keys(paths, cache):
        digest.update(bytes.fromhex(key))
    return digest.hexdigest()


def clear_memory_cache() -> None:
    """Forget the in-process digests and tags (tests; a long-lived process after external
    edits that kept mtime, size and inode)."""
    _MEMORY.clear()
    _MEMORY_TAGS.clear()
