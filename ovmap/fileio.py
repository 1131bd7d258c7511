"""Safe file I/O shared by the whole package (rules in docs/validation.md, sections Files and Checkpoints).

* Atomic writes (:func:`atomic_write`, :func:`atomic_write_bytes`): a result is either complete on disk or not
  there at all. Files get mode ``0666 & ~umask`` like a normal ``open()``; the temporary file is removed on any
  failure; temporary files left by killed runs are recognised by their name and removed by the next write to the
  same folder.
* :func:`read_text`: UTF-8 text of a file, ONE-line ``ValueError`` naming it when unreadable or binary.
* :func:`load_npz`: reads a whole ``.npz`` archive, refusing pickles; any corruption (truncated, empty,
  bit-flipped, not an archive) becomes ONE ``ValueError`` line naming the file.
* :func:`read_checkpoint` / :func:`read_state_dict`: read ``.safetensors``, ``torch.save`` pickles (with
  ``weights_only=True``: nothing is ever executed) and, where asked, TorchScript archives; any unreadable file
  becomes ONE ``ValueError`` line naming the file and the expected layout. :func:`key_mismatch_error` formats the
  error for a state dict with wrong keys (first few missing / unexpected keys).

Typical usage example:

    >>> from ovmap.fileio import atomic_write_bytes, load_npz
    >>> atomic_write_bytes("/tmp/x.txt", b"hi")  # doctest: +SKIP
    >>> arrays = load_npz("scene/gt_points.npz", what="GT points", required=("xyz", "label"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

#: Temporary files of :func:`atomic_write`: ``.<target name>.ovtmp-<host tag>-<pid>-<random>.tmp``.
TMP_MARK = ".ovtmp-"
_TMP_RE = re.compile(r"^\..+\.ovtmp-([0-9a-f]{8})-(\d+)-[A-Za-z0-9_]+\.tmp$")
#: A temporary file older than this (seconds since its last write) is stale whatever its owner.
STALE_TMP_AGE_S = 15 * 60
_cleaned_dirs: set[str] = set()


# ================================================================================================ atomic writes
def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFFFF:08x}"


def current_umask() -> int:
    """The process umask (read from /proc on Linux, else set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def is_stale_temp(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write` left behind by a killed run.

    Stale = its name matches the temporary pattern and either it was last written more than
    :data:`STALE_TMP_AGE_S` ago, or it was created on this host by a process that no longer exists.
    """
    m = _TMP_RE.match(path.name)
    if not m:
        return False
    try:
        age = (time.time() if now is None else now) - path.stat().st_mtime
    except OSError:
        return False
    if age > STALE_TMP_AGE_S:
        return True
    pid = int(m.group(2))
    return m.group(1) == _host_tag() and pid != os.getpid() and not _pid_alive(pid)


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Removes the stale temporary files (see :func:`is_stale_temp`) of ``folder``; returns the removed paths."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        if e.name.startswith(".") and TMP_MARK in e.name and e.is_file(follow_symlinks=False):
            p = Path(e.path)
            if is_stale_temp(p, now):
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, fsync it, then ``os.replace`` it into place.

    The parent folder is created if needed. The file gets mode ``0666 & ~umask`` (like ``open(path, "wb")`` on a
    new file). On any error (or Ctrl-C) the temporary file is removed and ``path`` is untouched. The first write
    into a folder (per process) removes the stale temporary files that killed runs left there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.parent.resolve())
    if key not in _cleaned_dirs:
        clean_stale_temps(path.parent)
        _cleaned_dirs.add(key)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}{TMP_MARK}{_host_tag()}-{os.getpid()}-", suffix=".tmp", dir=path.parent
    )
    try:
        try:
            os.fchmod(fd, 0o666 & ~current_umask())
        except OSError:  # a file system without permissions (e.g. some network mounts): keep its default
            pass
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


# ======================================================================================================== text
def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of ``path``; ONE-line ``ValueError`` naming the file when it cannot be read or is not text
    (e.g. a binary or corrupt file). ``FileNotFoundError`` when it does not exist."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror or _first_line(e)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not a text file (byte {e.start} is not UTF-8); corrupt or wrong file?") from None


# ========================================================================================================= npz
def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    line = text.splitlines()[0].strip() if text else ""
    return line or type(e).__name__


def load_npz(
    path: str | os.PathLike, what: str = "npz file", required: Iterable[str] = ()
) -> dict[str, np.ndarray]:
    """Reads every array of an ``.npz`` archive into memory, refusing pickled (object) arrays.

    Args:
        path: the archive.
        what: what the file is, for the error message (e.g. ``"map"``, ``"GT points"``).
        required: array names that must be present.

    Returns:
        {name: array} for all members.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ONE line naming the file: empty, not an npz archive (e.g. a text file), truncated or corrupt
            (bad CRC, bad zip structure, bad member header), holds object arrays (pickles are never loaded), or
            lacks a ``required`` array.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ValueError(f"cannot read {what} {path}: {e.strerror or _first_line(e)}") from None
    if size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes); recreate it")
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise ValueError(f"{what} {path} is not an .npz archive (it does not start with a zip header)")
    out: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                out[name] = np.asarray(z[name])
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise ValueError(
                f"{what} {path} holds object arrays (pickled data); refused: ovmap never loads pickles"
            ) from None
        raise ValueError(f"{what} {path} is corrupt or truncated ({_first_line(e)}); recreate it") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, NotImplementedError, RuntimeError) as e:
        raise ValueError(f"{what} {path} is corrupt or truncated ({_first_line(e)}); recreate it") from None
    missing = [k for k in required if k not in out]
    if missing:
        raise ValueError(f"{what} {path} lacks array(s) {', '.join(missing)} (found: {', '.join(sorted(out)) or 'none'})")
    return out


# ================================================================================================= checkpoints
def _torch_load_reason(e: BaseException) -> str:
    text = str(e)
    if "WeightsUnpickler error" in text or "Weights only load failed" in text:
        m = re.search(r"(Unsupported (?:global|operand)[^\n]*|[Tt]rying to load unsupported GLOBAL \S+)", text)
        detail = m.group(1).split(" was not an allowed global")[0].split(". Please")[0].rstrip(".") if m else ""
        return (
            "it is not a plain tensor checkpoint (refused by the safe loader, nothing was executed"
            + (f": {detail}" if detail else "")
            + ")"
        )
    if isinstance(e, EOFError):
        return "the file ends early (truncated)"
    if "PytorchStreamReader" in text or "zip archive" in text:
        return "not a torch.save archive (a zip file of another kind, or a corrupt or truncated one)"
    return f"{type(e).__name__}: {_first_line(e)}"[:300]


def read_checkpoint(
    path: str | os.PathLike,
    what: str,
    expected: str,
    *,
    torchscript: bool = False,
    safe_globals: Sequence[Any] = (),
) -> Any:
    """Reads a checkpoint file without ever executing code from it.

    ``.safetensors`` files are read with safetensors; other files, when ``torchscript``, first as a TorchScript
    archive (returns its ``state_dict()``), else / then with ``torch.load(weights_only=True)`` (``safe_globals``
    are extra allowed classes, e.g. ``argparse.Namespace``).

    Args:
        path: the file.
        what: what it is, for messages (e.g. ``"CLIP checkpoint"``).
        expected: the expected layout in a few words, for messages.
        torchscript: also accept a TorchScript archive (the OpenAI CLIP ``.pt`` files).
        safe_globals: classes allowed in the pickle besides tensors and containers.

    Returns:
        The loaded object (a dict of tensors for safetensors / TorchScript).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: ONE line ``cannot read <what> <path>: <reason>; expected <expected>`` for an empty, truncated,
            random, malicious or wrong-format file.
    """
    import warnings

    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")

    def fail(reason: str) -> ValueError:
        return ValueError(f"cannot read {what} {path}: {reason}; expected {expected}")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise fail(e.strerror or _first_line(e)) from None
    if size == 0:
        raise fail("the file is empty (0 bytes)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:  # noqa: BLE001 - SafetensorError and friends: any failure is a bad file
            raise fail(f"not a valid safetensors file ({_first_line(e)})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if torchscript and head.startswith(b"PK"):
            try:
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
            except (RuntimeError, ValueError):
                pass  # a zip that is not TorchScript: a torch.save archive, tried next
        try:
            with torch.serialization.safe_globals(list(safe_globals)):
                return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - UnpicklingError, EOFError, KeyError, RuntimeError: a bad file
            raise fail(_torch_load_reason(e)) from None


class StateDict(dict):
    """A state dict read from a file: a plain ``dict`` that also remembers the file (``source``) so that later
    key errors can name it."""

    source: Path | None = None

    def __reduce__(self):  # pickles (torch.save) as the plain OrderedDict a state dict normally is
        import collections

        return (collections.OrderedDict, (list(self.items()),))


def read_state_dict(
    path: str | os.PathLike,
    what: str,
    expected: str,
    *,
    torchscript: bool = False,
    nested: Sequence[str] = ("state_dict", "model"),
    strip_prefixes: Sequence[str] = ("module.",),
) -> dict[str, Any]:
    """A flat ``{name: tensor}`` :class:`StateDict` from a checkpoint file (see :func:`read_checkpoint`).

    A dict holding a state dict under one of the ``nested`` keys is unwrapped; ``strip_prefixes`` are removed
    from the names. Non-tensor entries (e.g. scalars some exports carry) are kept for the caller to drop.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: one line naming the file and ``expected``: unreadable, or not a dict of tensors.
    """
    import torch

    obj = read_checkpoint(path, what, expected, torchscript=torchscript)
    if isinstance(obj, dict):
        for key in nested:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not any(torch.is_tensor(v) for v in obj.values()):
        kind = f"a dict with keys {format_keys(list(obj))}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise ValueError(f"{what} {Path(path).expanduser()} holds {kind}, not a state dict; expected {expected}")
    out = StateDict()
    out.source = Path(path).expanduser()
    for k, v in obj.items():
        k = str(k)
        for p in strip_prefixes:
            k = k.removeprefix(p)
        out[k] = v
    return out


def format_keys(keys: Sequence[str], n: int = 5) -> str:
    """``['a', 'b'] (+3 more)``: the first ``n`` keys and how many more there are."""
    keys = [str(k) for k in keys]
    return repr(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def key_mismatch_error(
    what: str, source: str | os.PathLike | None, expected: str, missing: Sequence[str], unexpected: Sequence[str]
) -> ValueError:
    """ONE-line error for a state dict whose keys do not fit: names the file (``source``; None = an in-memory
    dict), the expected layout and the first five missing / unexpected keys with their counts."""
    where = f"{what} {source}" if source is not None else f"{what} (state dict)"
    parts = []
    if missing:
        parts.append(f"missing keys {format_keys(sorted(missing))}")
    if unexpected:
        parts.append(f"unexpected keys {format_keys(sorted(unexpected))}")
    return ValueError(f"{where} does not match the expected layout ({expected}): {'; '.join(parts)}")


def require_keys(
    sd: dict[str, Any], keys: Iterable[str], what: str, source: str | os.PathLike | None, expected: str
) -> None:
    """Raises ONE-line ``ValueError`` when any of ``keys`` is absent from ``sd``: names the file, the expected
    layout, the missing keys and the first keys the file holds instead."""
    missing = [k for k in keys if k not in sd]
    if missing:
        where = f"{what} {source}" if source is not None else f"{what} (state dict)"
        raise ValueError(
            f"{where} does not match the expected layout ({expected}): missing keys {format_keys(missing)}; "
            f"it holds {format_keys(list(sd))}"
        )
