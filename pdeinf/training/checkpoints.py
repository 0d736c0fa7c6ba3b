"""Checkpoint files that prove their content: each carries a SHA-256 of what it holds (every
tensor's dtype, shape and bytes, and every other entry), verified on load with the zip
archive's CRCs and the finiteness of the weights and optimizer state. A file that fails raises
`CorruptCheckpoint`; `usable` moves it aside (`<name>.corrupt-<n>`, one line on stderr) so that
training resumes from the last good checkpoint or retrains.
"""
from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import torch

from pdeinf.atomic import torch_save
from pdeinf.errors import InputError, NumericalError

CHECKSUM_KEY = "sha256"  # the entry of a saved state that holds the SHA-256 of the rest
FINITE_KEYS = ("model_state", "optimizer_state")  # entries whose float tensors must be finite


class CorruptCheckpoint(InputError):
    """A checkpoint whose bytes or content fail verification; `path` names the file."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{path}: corrupt checkpoint ({why}); rerun its training (`pdeinf "
                         "reproduce`, or `pdeinf train` with the same arguments): it is moved "
                         "aside and rebuilt from the last good checkpoint")

    def __reduce__(self):  # raised in a worker process, re-raised in its parent
        return type(self), (self.path, self.why)


def _feed(digest, obj) -> None:
    """Add `obj` (tensors, dicts, lists, scalars) to `digest` canonically."""
    if isinstance(obj, torch.Tensor):
        flat = obj.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{flat.dtype}{tuple(obj.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        digest.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(digest, item)
    else:
        digest.update(f"V{obj!r}".encode())


def state_digest(state: dict) -> str:
    """SHA-256 of everything in `state` but its own checksum entry."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


def non_finite(state: dict) -> str | None:
    """The first entry of `FINITE_KEYS` holding a NaN or Inf (e.g. `optimizer_state`), or None."""
    def walk(obj) -> bool:
        if isinstance(obj, torch.Tensor):
            return obj.is_floating_point() and not bool(torch.isfinite(obj).all())
        items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
        return any(walk(v) for v in items)

    return next((k for k in FINITE_KEYS if walk(state.get(k))), None)


def save_checkpoint(state: dict, path: Path | str) -> Path:
    """Write `state` with its checksum, atomically. NumericalError (nothing written) when the
    weights or the optimizer state hold NaN or Inf."""
    bad = non_finite(state)
    if bad is not None:
        raise NumericalError(f"{path}: {bad} holds NaN or Inf; checkpoint not written")
    return torch_save(_canonical({**state, CHECKSUM_KEY: state_digest(state)}), path)


def _canonical(obj):
    """`obj` rebuilt with new containers and interned strings: pickle writes an object shared
    in several places once, so equal states built differently (a resumed run's optimizer keys
    are unpickled, a fresh run's are the literals its config shares) would differ in bytes."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        out = type(obj)((_canonical(k), _canonical(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a module state dict's versions
            out._metadata = _canonical(obj._metadata)
        return out
    if type(obj) in (list, tuple):
        return type(obj)(_canonical(v) for v in obj)
    return obj


def read_checkpoint(path: Path | str) -> dict:
    """The state saved in `path`, verified (module doc). CorruptCheckpoint when it fails;
    states saved before checksums existed are accepted when their archive is intact."""
    path = Path(path)
    try:  # torch's format is a zip archive; torch.load checks neither its CRCs nor a checksum
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CorruptCheckpoint(path, f"not an intact archive: {err}") from None
    if bad is not None:
        raise CorruptCheckpoint(path, f"CRC mismatch in {bad}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- torch.load raises many types on garbage
        raise CorruptCheckpoint(path, f"unreadable: {type(err).__name__}: {err}") from None
    if not isinstance(state, dict):
        raise CorruptCheckpoint(path, "not a dict of tensors")
    stored = state.get(CHECKSUM_KEY)
    if stored is not None and stored != state_digest(state):
        raise CorruptCheckpoint(path, "SHA-256 of its content does not match the one saved")
    bad = non_finite(state)
    if bad is not None:
        raise CorruptCheckpoint(path, f"{bad} holds NaN or Inf")
    return state


def usable(path: Path | str) -> dict | None:
    """The verified state of `path`; None when it does not exist or was corrupt: then it is
    renamed to the first free `<name>.corrupt-<n>` beside it, with one line on stderr."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return read_checkpoint(path)
    except CorruptCheckpoint as err:
        n = 1
        while (aside := path.with_name(f"{path.name}.corrupt-{n}")).exists():
            n += 1
        path.rename(aside)
        print(f"[pdeinf] {path}: corrupt checkpoint ({err.why}); moved aside to {aside.name}",
              file=sys.stderr, flush=True)
        return None


#: File versions (path, size, mtime, ctime, inode) that `verify` found intact in this process.
_VERIFIED: set[tuple] = set()


def _version(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def verify(path: Path | str) -> bool:
    """`usable(path) is not None` (a corrupt file is moved aside), remembered for the file's
    version (path, size, mtime, ctime, inode): a process that checks the same checkpoint for
    several stages reads it once, and a rewritten, replaced or touched file is read again."""
    version = _version(Path(path))
    if version is None:
        return False
    if version in _VERIFIED:
        return True
    intact = usable(path) is not None
    if intact:
        _VERIFIED.add(version)
    return intact
