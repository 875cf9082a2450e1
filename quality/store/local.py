"""A local folder as an image store."""

from __future__ import annotations

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
                    target = Path(entry.path).resolve()
                    if not self._inside(target) or not target.is_file():
                        continue
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
            The URI escapes the root (``..``, an outside absolute path, or a symlink out).
        """
        raw = Path(uri)
        candidate = raw if raw.is_absolute() else self._root / raw
        if ".." in Path(uri).parts:
            raise StoreError(uri, f"path escapes the store root {self.root}")
        resolved = candidate.resolve()
        if not self._inside(Path(os.path.normpath(candidate))) or not self._inside(resolved):
            raise StoreError(uri, f"path escapes the store root {self.root}")
        return resolved

    def open(self, uri: str) -> BinaryIO:
        """Open ``uri`` for binary reading.

        Raises
        ------
        StoreError
            The URI escapes the root or the file cannot be opened.
        """
        path = self.local_path(uri)
        try:
            return path.open("rb")
        except OSError as exc:
            raise StoreError(uri, f"cannot open: {exc.strerror}") from exc
