"""Atomic artifacts: write to a temporary sibling, fsync, then ``os.replace``.

A run that fails or is interrupted leaves the previous artifact (or nothing), never half a file.
Directories are staged next to their destination and swapped in when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant_common.errors import QuantError


def ensure_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) and check it is writable, or raise one clear line."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise QuantError(f"output path {out} exists and is not a directory", "choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QuantError(f"cannot create output directory {out}: {exc.strerror or exc}",
                         "choose a writable --out directory") from exc
    if not out.is_dir():
        raise QuantError(f"output path {out} exists and is not a directory", "choose another --out")
    probe = None
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
    except OSError as exc:
        raise QuantError(f"output directory {out} is not writable: {exc.strerror or exc}",
                         "choose a writable --out directory") from exc
    finally:
        if probe:
            with contextlib.suppress(OSError):
                os.unlink(probe)
    return out


def _default_mode(directory: bool) -> int:
    """What a plain ``open``/``mkdir`` would give under the user's umask (mkstemp/mkdtemp use 0600/0700, which
    would hide finished artifacts from, say, a Triton server running as another user)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def staged_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Use for writers that want a filename (``onnx.save``, ``np.savez``, ``torch.save``).
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp" + dest.suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _default_mode(directory=False))
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with staged_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set):
        return sorted(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it takes ``path``'s place.

    An existing ``path`` is moved aside and removed only after the new one is in place, so a failure
    at any point leaves either the old directory or the new one, never a mix.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.staging-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, _default_mode(directory=True))
    _swap_in_dir(tmp, dest)


def _swap_in_dir(src: Path, dest: Path) -> None:
    """Put directory ``src`` at ``dest`` (same filesystem); an existing ``dest`` is removed only afterwards."""
    old = None
    if dest.exists() or dest.is_symlink():
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
        os.replace(dest, old / "previous")
    os.replace(src, dest)
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def publish(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Move a finished staged file or directory to ``dest`` by an atomic rename.

    A file on another filesystem is first copied beside ``dest``; a directory replaces ``dest`` whole.
    """
    source, target = Path(src), Path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        _swap_in_dir(source, target)
        return target
    if not _same_filesystem(source, target.parent):
        with staged_file(target) as tmp:
            shutil.copyfile(source, tmp)
        source.unlink()
        return target
    os.replace(source, target)
    return target


def _same_filesystem(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


@dataclass(frozen=True)
class Staging:
    """A private temporary directory whose contents end up under ``final`` once complete."""

    root: Path
    final: Path

    def final_path(self, path: str | os.PathLike[str]) -> Path:
        """Where ``path`` (inside ``root``) will live after publishing; other paths are returned resolved."""
        resolved = Path(path).resolve()
        try:
            return self.final.resolve() / resolved.relative_to(self.root.resolve())
        except ValueError:
            return resolved


@contextlib.contextmanager
def staging_area(out: str | os.PathLike[str], prefix: str = ".staging-") -> Iterator[Staging]:
    """A private directory inside ``out`` for a run's artifacts (publish them with :func:`publish_files`).

    Removed afterwards, and ``out`` too if this run created it and nothing was published (the run failed).
    """
    final = Path(out)
    created = not final.exists()
    ensure_output_dir(final)
    root = Path(tempfile.mkdtemp(dir=final, prefix=prefix))
    try:
        yield Staging(root, final)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                final.rmdir()  # only succeeds while empty


def publish_files(staged: Mapping[str, Path], out: str | os.PathLike[str],
                  destinations: Mapping[str, Path | None] | None = None) -> dict[str, Path]:
    """Move finished staged files into ``out`` by atomic renames, in ``staged``'s order (put the manifest last).

    ``destinations`` overrides where a key goes (a user-chosen path, possibly on another disk).
    """
    final: dict[str, Path] = {}
    for key, src in staged.items():
        target = (destinations or {}).get(key) or Path(out) / src.name
        final[key] = publish(src, target)
    return final
