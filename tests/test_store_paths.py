"""Path safety: a URI may not escape its store root (``..``, absolute paths, symlinks).

For :class:`~quality.store.local.LocalStore`: ``..`` in every position, percent escapes,
absolute paths outside, symlinked files and folders pointing outside, a link chain that
leaves and re-enters, link loops, the root itself, special files, and that ``list()`` never
yields an entry outside the root. For the remote dispatch (:func:`quality.store.store_for_uri`,
:func:`~quality.store.open_uri`): malformed URIs are :class:`StoreError`. The S3 and
DICOMweb stores test their own roots (``tests/test_store_s3.py``, ``..._dicomweb.py``).

Then the checks over a remote store (a fake one, registered as in ``test_thumbcache``):
``integrity.missing_files`` asks the store, names URIs outside its root, and stops with a
clear error when the store cannot be reached instead of calling every image missing.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from test_checks import add_check_rows, failing_keys, sop
from test_thumbcache import FakeStore, remote  # noqa: F401 (fixture)
from test_viewer_overlays import write_dicom

from quality.checks import _file_problem, _store_loader, run_checks
from quality.db.schema import Image
from quality.db.session import make_engine, upgrade
from quality.errors import DicomReadError, QualityError, StoreError, StoreUnavailableError
from quality.store import open_store, open_uri, store_for_uri
from quality.store.local import LocalStore

# --------------------------------------------------------------------------- a store tree


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """``base/root`` (the store) beside ``base/outside`` and ``base/rootevil``::

    root/a/in.dcm             a file
    root/a/.hidden.dcm        hidden: not listed
    root/link_in.dcm          -> root/a/in.dcm
    root/link_out.dcm         -> outside/secret.dcm
    root/dir_out              -> outside (a folder)
    root/dir_in               -> root/a (a folder: not descended)
    root/chain.dcm            -> outside/hop -> root/a/in.dcm
    root/chain_out.dcm        -> root/hop_in -> outside/secret.dcm
    root/loop1 <-> root/loop2 a link loop
    root/dangling.dcm         -> root/nothing
    root/fifo                 a named pipe
    """
    base = tmp_path / "base"
    root, outside, evil = base / "root", base / "outside", base / "rootevil"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    evil.mkdir()
    (root / "a" / "in.dcm").write_bytes(b"inside")
    (root / "a" / ".hidden.dcm").write_bytes(b"hidden")
    (outside / "secret.dcm").write_bytes(b"SECRET")
    (evil / "x.dcm").write_bytes(b"SECRET")
    (root / "link_in.dcm").symlink_to(root / "a" / "in.dcm")
    (root / "link_out.dcm").symlink_to(outside / "secret.dcm")
    (root / "dir_out").symlink_to(outside, target_is_directory=True)
    (root / "dir_in").symlink_to(root / "a", target_is_directory=True)
    (outside / "hop").symlink_to(root / "a" / "in.dcm")
    (root / "chain.dcm").symlink_to(outside / "hop")
    (root / "hop_in").symlink_to(outside / "secret.dcm")
    (root / "chain_out.dcm").symlink_to(root / "hop_in")
    (root / "loop1").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop1")
    (root / "dangling.dcm").symlink_to(root / "nothing")
    os.mkfifo(root / "fifo")
    return {"base": base, "root": root, "outside": outside, "evil": evil}


def _refused(store: LocalStore, uri: str) -> None:
    with pytest.raises(StoreError):
        store.local_path(uri)
    with pytest.raises(StoreError):
        store.open(uri)


DOTDOT = [
    "..",
    "../outside/secret.dcm",
    "../root/a/in.dcm",  # leaves and comes back: still refused, '..' is never needed
    "a/..",
    "a/../a/in.dcm",
    "a/../../outside/secret.dcm",
    "a/b/../../..",
    "./../outside/secret.dcm",
    "a/in.dcm/..",
    "a/./../../outside",
]


@pytest.mark.parametrize("rel", DOTDOT)
def test_dotdot_in_any_position_is_refused(tree: dict[str, Path], rel: str) -> None:
    store = LocalStore(tree["root"])
    _refused(store, rel)
    _refused(store, f"{tree['root']}/{rel}")  # the same, absolute


def test_absolute_paths_outside_are_refused(tree: dict[str, Path]) -> None:
    store = LocalStore(tree["root"])
    for uri in (
        str(tree["outside"] / "secret.dcm"),
        str(tree["evil"] / "x.dcm"),  # shares the root's name as a string prefix
        "/etc/passwd",
        "//etc/passwd",
        str(tree["base"]),
        "/",
    ):
        _refused(store, uri)


def test_nul_bytes_and_loops_are_store_errors(tree: dict[str, Path]) -> None:
    store = LocalStore(tree["root"])
    for uri in ("a/in.dcm\x00.png", "loop1", "loop1/x"):
        _refused(store, uri)


def test_percent_escapes_are_names_not_dots(tree: dict[str, Path]) -> None:
    store = LocalStore(tree["root"])
    for uri in ("%2e%2e/outside/secret.dcm", "%2E%2E%2Foutside%2Fsecret.dcm", "a%2fin.dcm"):
        path = store.local_path(uri)  # a literal (absent) name inside the root
        assert tree["root"] in path.parents
        with pytest.raises(StoreError, match="cannot open"):
            store.open(uri)
    # '~' is a name too, never the home folder.
    assert store.local_path("~/x") == tree["root"] / "~" / "x"


def test_file_url_roots_are_decoded_once_and_resolved(tree: dict[str, Path]) -> None:
    sub = tree["root"] / "a"
    # file:///.../root/a/%2e%2e is root itself, canonical: what you list is what you get.
    url = "file://" + urllib.parse.quote(str(sub)) + "/%2e%2e"
    store = open_store(url)
    assert store.root == str(tree["root"])
    assert all(Path(e.uri).is_relative_to(tree["root"]) for e in store.list())
    # Encoded dots climbing out of the given folder make *that* folder the root; its
    # entries stay inside it, and the original root's files are outside of it.
    up = open_store("file://" + urllib.parse.quote(str(tree["outside"])) + "/%2E%2E/outside")
    assert up.root == str(tree["outside"])
    with pytest.raises(StoreError):
        up.local_path(str(tree["root"] / "a" / "in.dcm"))
    with pytest.raises(StoreError, match="this machine"):
        open_store("file://otherhost/etc")


def test_symlinks_out_of_the_root_are_refused(tree: dict[str, Path]) -> None:
    store = LocalStore(tree["root"])
    for uri in (
        "link_out.dcm",
        "dir_out/secret.dcm",
        "dir_out",
        "chain_out.dcm",  # inside -> inside -> outside
        str(tree["root"] / "link_out.dcm"),
        str(tree["root"] / "dir_out" / "secret.dcm"),
    ):
        _refused(store, uri)


def test_links_that_end_inside_read_the_file_inside(tree: dict[str, Path]) -> None:
    store = LocalStore(tree["root"])
    inside = tree["root"] / "a" / "in.dcm"
    # A chain that passes outside and ends inside reads the root's own file (the check is on
    # the final target), as list() does.
    for uri in ("link_in.dcm", "dir_in/in.dcm", "chain.dcm", "a/in.dcm", str(inside)):
        assert store.local_path(uri) == inside
        with store.open(uri) as fh:
            assert fh.read() == b"inside"


def test_the_root_itself_and_special_files_are_not_entries(tree: dict[str, Path]) -> None:
    store = LocalStore(tree["root"])
    for uri in ("", ".", str(tree["root"]), "a", "dangling.dcm"):
        with pytest.raises(StoreError):
            store.open(uri)
    # A named pipe inside the root would block a reader forever: refused at once.
    with pytest.raises(StoreError, match="regular"):
        store.open("fifo")


def test_list_never_leaves_the_root(tree: dict[str, Path]) -> None:
    store = LocalStore(tree["root"])
    entries = list(store.list())
    keys = [e.key for e in entries]
    assert keys == sorted(keys)
    assert set(keys) == {"a/in.dcm", "chain.dcm", "link_in.dcm"}
    for e in entries:
        assert Path(e.uri).is_relative_to(tree["root"])
        assert tree["root"] in Path(e.uri).resolve().parents
        with store.open(e.uri) as fh:
            assert fh.read() == b"inside"
    # A root given through a symlink lists under the resolved root.
    alias = tree["base"] / "alias"
    alias.symlink_to(tree["root"], target_is_directory=True)
    assert {e.uri for e in LocalStore(alias).list()} == {e.uri for e in entries}


def test_open_returns_a_named_seekable_file(tree: dict[str, Path]) -> None:
    store = LocalStore(tree["root"])
    with store.open("a/in.dcm") as fh:
        assert fh.name == str(tree["root"] / "a" / "in.dcm")
        fh.seek(2)
        assert fh.read() == b"side"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://",
        "s3:///key.dcm",
        "S3:///key.dcm",
        "dicomweb+http://pacs/dicom-web",
        "dicomweb+https://pacs/dicom-web/series/1/instances/2",
        "dicomweb+http://pacs/dicom-web/Studies/1",
    ],
)
def test_malformed_remote_uris_are_store_errors(uri: str) -> None:
    with pytest.raises(StoreError):
        store_for_uri(uri)
    with pytest.raises(StoreError):
        open_uri(uri)


def test_store_for_uri_refuses_what_is_not_remote(tree: dict[str, Path]) -> None:
    for uri in (str(tree["root"] / "a" / "in.dcm"), "ftp://host/x.dcm", "http://pacs/studies/1"):
        with pytest.raises(StoreError, match="not a remote"):
            store_for_uri(uri)
    with pytest.raises(StoreError, match="unsupported store scheme"):
        open_store("ftp://host/x")


# --------------------------------------------------------------------------- checks, remote


def test_file_problem_asks_a_remote_store(
    remote: Callable[[FakeStore], FakeStore],  # noqa: F811
) -> None:
    store = remote(FakeStore("s3://bucket/demo", {"s3://bucket/demo/a.dcm": "/dev/null"}))
    assert _file_problem(store, "s3://bucket/demo/a.dcm") is None
    assert _file_problem(store, "s3://bucket/demo/b.dcm") == "file not found in the store"
    outside = "outside the store root s3://bucket/demo"
    for uri in ("s3://bucket/other/a.dcm", "s3://bucket/demox/a.dcm", "/data/a.dcm"):
        assert _file_problem(store, uri) == outside
    store.down = True
    with pytest.raises(StoreUnavailableError):
        _file_problem(store, "s3://bucket/demo/a.dcm")
    # A root with options (a DICOMweb root may carry a query) still contains its entries.
    dw = FakeStore("dicomweb+http://pacs/dicom-web?source=x", {})
    assert (
        _file_problem(dw, "dicomweb+http://pacs/dicom-web/studies/1/series/2/instances/3")
        == "file not found in the store"
    )


def test_file_problem_on_a_local_store_is_unchanged(tree: dict[str, Path]) -> None:
    store = LocalStore(tree["root"])
    assert _file_problem(store, str(tree["root"] / "a" / "in.dcm")) is None
    assert _file_problem(store, str(tree["root"] / "a" / "gone.dcm")) == (
        "file not found in the store"
    )
    for uri in (str(tree["outside"] / "secret.dcm"), "link_out.dcm", "s3://bucket/a.dcm"):
        assert _file_problem(store, uri) == f"outside the store root {store.root}"


def test_store_loader_reads_remote_images_and_stops_when_the_store_is_down(
    tmp_path: Path,
    remote: Callable[[FakeStore], FakeStore],  # noqa: F811
) -> None:
    path = write_dicom(tmp_path / "a.dcm", np.ones((8, 8)) * 7)
    store = remote(FakeStore("s3://bucket", {"s3://bucket/a.dcm": path}))
    load = _store_loader(store)
    img = load("s3://bucket/a.dcm")
    assert img.frames.shape == (1, 8, 8) and img.uri == "s3://bucket/a.dcm"
    with pytest.raises(DicomReadError, match="outside the store root"):
        load("s3://elsewhere/a.dcm")
    with pytest.raises(DicomReadError) as err:
        load("s3://bucket/missing.dcm")
    assert err.value.kind == "read_error"
    store.down = True
    with pytest.raises(QualityError, match="not reachable") as down:
        load("s3://bucket/a.dcm")
    # Not a ValueError: the duplicate search's per-image handler must not swallow it.
    assert not isinstance(down.value, ValueError | OSError)
    opens = store.opens
    with pytest.raises(QualityError, match="not reachable"):
        load("s3://bucket/b.dcm")
    assert store.opens == opens  # later images fail at once, no retries per image


@pytest.fixture
def remote_db(tmp_path: Path) -> Iterator[Session]:
    """The ``test_checks`` DB (SQLite) with its image URIs moved to ``s3://bucket/store/``."""
    engine = make_engine(f"sqlite:///{tmp_path / 'checks.db'}")
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as session:
        add_check_rows(session, tmp_path)
        prefix = str(tmp_path / "store")
        for image_id, uri in session.execute(select(Image.id, Image.uri)).all():
            new = "s3://bucket/store" + uri.removeprefix(prefix)
            session.execute(update(Image).where(Image.id == image_id).values(uri=new))
        session.commit()
        yield session
    engine.dispose()


def test_missing_files_check_over_a_remote_store(
    remote_db: Session,
    remote: Callable[[FakeStore], FakeStore],  # noqa: F811
) -> None:
    files = {f"s3://bucket/store/{sop(k)}.dcm": "/dev/null" for k in ("I1", "I2", "I3", "I4")}
    store = remote(FakeStore("s3://bucket/store", files))
    report = run_checks(
        remote_db, "chest", checks=["integrity.missing_files"], save=False, store=store
    )
    o = report.outcomes[0]
    assert (o.n_checked, o.n_failed) == (6, 2)
    assert failing_keys(o) == {"I5", "I6"}
    assert set(o.failing["value"]) == {"file not found in the store"}
    # A store that holds none of them: not run, as for folders.
    other = remote(FakeStore("s3://other", {}))
    report = run_checks(
        remote_db, "chest", checks=["integrity.missing_files"], save=False, store=other
    )
    assert report.outcomes[0].status == "not_run"
    # A store that cannot be reached stops the run with a clear error, not 6 missing files.
    store.down = True
    with pytest.raises(StoreUnavailableError, match="connection refused"):
        run_checks(remote_db, "chest", checks=["integrity.missing_files"], save=False, store=store)
