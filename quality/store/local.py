"""A local folder as an image store."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from quality.errors import StoreError
from quality.store import StoreEntry

__all__ = ["LocalStore"]


class LocalStore:
    """Files below a local folder, listed recursively.

    Entry URIs are absolute file paths (``str``) under the resolved root. Hidden files and
    folders (names starting with ``.``) are skipped, as are non-regular files. Symbolic links
    are followed only when their target stays inside the root; symlinked folders are not
    descended (no cycles).

    Path safety: an entry may not escape the root. :meth:`local_path` and :meth:`open`
    refuse a ``..`` segment anywhere, an absolute path outside the root, a NUL byte, and a
    path whose symbolic links (of the file or of a folder on the way) lead outside; what is
    checked is both the path as written and its final target, so a chain of links that
    passes outside and ends inside reads the file inside, as :meth:`list` does. Percent
    escapes are not decoded in entries (``%2e%2e`` is a plain name); a ``file://`` *root* is
    decoded once by :func:`quality.store.open_store` and then resolved, so :attr:`root` is
    always the canonical folder. :meth:`open` reads regular files only (a FIFO or device
    inside the root would block or never end) and does not follow a link swapped in at the
    last moment (``O_NOFOLLOW`` on the resolved path).

    Parameters
    ----------
    root : the folder.

    Raises
    ------
    StoreError
        ``root`` does not exist or is not a folder.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        path = Path(root).expanduser()
        if not path.exists():
            raise StoreError(str(root), "folder does not exist")
        if not path.is_dir():
            raise StoreError(str(root), "not a folder")
        self._root = path.resolve()
        self.root = str(self._root)

    def __repr__(self) -> str:
        return f"LocalStore({self.root!r})"

    def _inside(self, path: Path) -> bool:
        return path == self._root or self._root in path.parents

    def list(self) -> Iterator[StoreEntry]:
        """Every regular, non-hidden file below the root, sorted by relative path."""
        yield from self._walk(self.root, "")

    def _walk(self, folder: str, prefix: str) -> Iterator[StoreEntry]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise StoreError(folder, f"cannot list folder: {exc.strerror}") from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue
            key = prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._walk(entry.path, key + "/")
                    continue
                if entry.is_symlink():
                    target = _resolve(Path(entry.path))
                    if target is None or not self._inside(target) or not target.is_file():
                        continue  # outside, dangling or a loop
                    st = target.stat()
                else:
                    st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished or unreadable while listing: not part of the store
            if not stat.S_ISREG(st.st_mode):
                continue
            yield StoreEntry(uri=entry.path, size=st.st_size, mtime=st.st_mtime, key=key)

    def local_path(self, uri: str) -> Path:
        """The absolute path of ``uri`` (absolute, or relative to the root).

        Raises
        ------
        StoreError
            The URI escapes the root (``..``, an outside absolute path, or a symlink out),
            holds a NUL byte, or runs into a symbolic link loop.
        """
        text = os.fspath(uri)
        if "\x00" in text:
            raise StoreError(repr(text), "a path cannot contain a NUL byte")
        raw = Path(text)
        candidate = raw if raw.is_absolute() else self._root / raw
        if ".." in raw.parts:
            raise StoreError(text, f"path escapes the store root {self.root}")
        resolved = _resolve(candidate)
        if resolved is None:
            raise StoreError(text, "a symbolic link loop")
        if not self._inside(Path(os.path.normpath(candidate))) or not self._inside(resolved):
            raise StoreError(text, f"path escapes the store root {self.root}")
        return resolved

    def open(self, uri: str) -> BinaryIO:
        """Open ``uri`` for binary reading.

        Raises
        ------
        StoreError
            The URI escapes the root, the file cannot be opened, or it is not a regular file
            (the root itself, a folder, a FIFO, a device).
        """
        path = self.local_path(uri)
        if path == self._root:
            raise StoreError(uri, "the store root is a folder, not an entry")
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            raise StoreError(uri, f"cannot open: {exc.strerror}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(uri, "not a regular file")
            if flags & getattr(os, "O_NONBLOCK", 0):
                os.set_blocking(fd, True)
            fh = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(AttributeError):
            fh.raw.name = str(path)  # type: ignore[attr-defined]  # a name, not an fd number
        return fh


def _resolve(path: Path) -> Path | None:
    """``path.resolve()``, or None for a symbolic link loop (pathlib raises RuntimeError)."""
    try:
        return path.resolve()
    except RuntimeError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
