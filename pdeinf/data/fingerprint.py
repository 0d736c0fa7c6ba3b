"""Content keys of data files: a hash of their bytes, cached per file.

`file_key(path)` is the blake2b digest (16 bytes, hex) of the file's bytes, read in 1 MiB
blocks. Hashing a 5 GB chunk takes seconds, so digests are cached by the file's identity
`(resolved path, mtime_ns, size, inode)`: in memory for the process, and optionally in a small
JSON file (`cache`, e.g. beside the data) shared between runs. Any change of identity (an edit,
a `touch`, a copy) recomputes the digest once; an in-place edit that somehow kept mtime, size
and inode would go unnoticed, which is the usual make/rsync trade-off.

`content_key(paths)` combines the file digests in the given order (not the paths, so moving a
data root keeps its key).
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

#: In-process cache: identity tuple -> hex digest.
_MEMORY: dict[tuple, str] = {}


def _identity(path: Path) -> tuple:
    try:
        stat = path.stat()
    except OSError as err:
        raise InputError(f"{path}: cannot stat data file ({err.strerror or err})") from None
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    return (str(path.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino)


def hash_file(path: str | os.PathLike) -> str:
    """blake2b hex digest of the file's bytes, streamed in 1 MiB blocks (no cache)."""
    path = Path(path)
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

    payload = {**payload, "version": CACHE_VERSION}
    try:
        write_json(cache, payload)
    except OSError:  # a read-only location only costs a rehash next time
        pass


#: In-process tags: (digest, tag) pairs.
_MEMORY_TAGS: set[tuple[str, str]] = set()


def has_tag(key: str, tag: str, cache: str | os.PathLike | None = None) -> bool:
    """Whether content `key` was marked with `tag` (e.g. "validated-v1") in this process or in
    the `cache` file."""
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
    """The content digest of each file, in order, cached by `(path, mtime_ns, size, inode)`
    in memory and, when `cache` is given, in that JSON file (created if missing)."""
    paths = [Path(p) for p in paths]
    identities = [_identity(p) for p in paths]
    cache_path = Path(cache) if cache is not None else None
    stored = _load_payload(cache_path)["files"] if cache_path is not None else {}
    changed = False
    keys = []
    for identity in identities:
        key = _MEMORY.get(identity)
        record = stored.get(identity[0])
        if key is None and isinstance(record, dict) and record.get("identity") == list(identity[1:]):
            key = record.get("digest")
        if not isinstance(key, str):
            key = hash_file(identity[0])
        _MEMORY[identity] = key
        if cache_path is not None and (not isinstance(record, dict) or record.get("digest") != key
                                       or record.get("identity") != list(identity[1:])):
            stored[identity[0]] = {"identity": list(identity[1:]), "digest": key}
            changed = True
        keys.append(key)
    if changed:  # reread: keep the tags another call may have written
        _save_payload(cache_path, {**_load_payload(cache_path), "files": stored})
    return keys


def content_key(paths: Iterable[str | os.PathLike], cache: str | os.PathLike | None = None) -> str:
    """One hex key for the bytes of `paths` in order (file digests combined with blake2b).
    Editing any byte of any file changes it; renaming or moving the files does not."""
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for key in file_keys(paths, cache):
        digest.update(bytes.fromhex(key))
    return digest.hexdigest()


def clear_memory_cache() -> None:
    """Forget the in-process digests (tests; a long-lived process after external edits that
    kept mtime, size and inode)."""
    _MEMORY.clear()
    _MEMORY_TAGS.clear()
