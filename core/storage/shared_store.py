"""The shared folder every worker sees (a volume shared across machines): files written so that no reader ever
sees half of one.

A file is written to a temporary name beside its target, flushed to disk, then renamed over the target
(``os.replace`` is atomic on POSIX filesystems, NFS included). A folder is built under a staging name and
renamed into place once complete. Readers therefore see the old file or the new one, never a torn write.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STAGING_PREFIX = ".staging-"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so that readers see either the old file or the whole new one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f"{STAGING_PREFIX}{target.name}.{uuid.uuid4().hex}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SharedStore:
    """Paths and atomic writes under the shared root (``Settings.shared_path``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def write(self, relative: str, data: bytes) -> Path:
        target = self.root / relative
        write_atomic(target, data)
        return target

    @contextmanager
    def staging(self, parent: str) -> Iterator[Path]:
        """A fresh folder under ``parent`` to build something in; removed on error (the caller renames it into
        place with :meth:`commit_folder` when complete)."""
        folder = self.root / parent / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    @staticmethod
    def commit_folder(staged: Path, target: Path) -> Path:
        """Rename a complete staged folder to ``target`` (atomic; ``target`` must not exist yet)."""
        for path in staged.rglob("*"):
            if path.is_file():
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        os.rename(staged, target)
        _fsync_dir(target.parent)
        return target

    def remove_stale_staging(self, parent: str, older_than_s: float = 3600.0) -> int:
        """Staging folders left by a process killed mid-build (never read by anyone), once they are old enough
        that no live build can still be writing them: removed."""
        import time

        folder = self.root / parent
        if not folder.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        stale = [
            p for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX) and p.stat().st_mtime < cutoff
        ]
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return len(stale)
