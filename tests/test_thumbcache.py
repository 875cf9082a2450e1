"""The on-disk thumbnail cache (:mod:`quality.store.thumbcache`) and the two-level cache of
:func:`quality.ui.thumbs.load_thumb`, with the viewer over remote stores.

Remote stores are stood in for by :class:`FakeStore` (registered through
``quality.store._remote_store``, which :func:`quality.store.store_for_uri` consults), so
these tests need no server: an ``s3://`` store that only opens files, and a DICOMweb-like
one that also renders thumbnails, the way :mod:`quality.store.dicomweb` does.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from test_viewer_overlays import write_dicom

import quality.store
from quality.errors import DicomReadError, StoreError, StoreUnavailableError
from quality.store.thumbcache import CachedThumb, ThumbCache, thumb_key
from quality.ui import thumbs, viewer

ROOT = Path(__file__).resolve().parent.parent
KIB = 1024


def _noise(seed: int, side: int = 64) -> np.ndarray:
    """Incompressible pixels: a PNG of them is about ``side²`` bytes."""
    return np.random.default_rng(seed).integers(0, 256, (side, side), dtype=np.uint8)


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def _key(i: int) -> str:
    return thumb_key(f"s3://bucket/img{i}.dcm", 256)


# --------------------------------------------------------------------------- ThumbCache


def test_round_trip_is_exact(tmp_path: Path) -> None:
    cache = ThumbCache(tmp_path / "c", 10 * 2**20)
    pixels = _noise(1, 37)[:, :29].copy()  # odd sizes
    key = thumb_key("dicomweb+http://pacs/dicom-web/studies/1/series/2/instances/3", 256)
    cache.put(key, pixels, (1111, 877), 877 / 29)
    got = cache.get(key)
    assert isinstance(got, CachedThumb)
    np.testing.assert_array_equal(got.pixels, pixels)
    assert got.pixels.dtype == np.uint8
    assert got.shape == (1111, 877) and got.factor == 877 / 29  # float kept exactly
    assert cache.get(_key(99)) is None
    s = cache.stats()
    assert (s["hits"], s["misses"], s["entries"]) == (1, 1, 1)
    assert s["bytes"] == _disk_bytes(tmp_path / "c")
    # A new instance (another process, an app restart) finds it: scanned at open.
    again = ThumbCache(tmp_path / "c", 10 * 2**20)
    assert again.stats()["entries"] == 1 and again.stats()["bytes"] == s["bytes"]
    np.testing.assert_array_equal(again.get(key).pixels, pixels)  # type: ignore[union-attr]


def test_put_validates_its_input(tmp_path: Path) -> None:
    cache = ThumbCache(tmp_path, 2**20)
    with pytest.raises(ValueError, match="uint8"):
        cache.put(_key(1), np.zeros((4, 4), np.float32), (8, 8), 2.0)
    with pytest.raises(ValueError, match="2-D"):
        cache.put(_key(1), np.zeros((4, 4, 3), np.uint8), (8, 8), 2.0)
    with pytest.raises(ValueError, match="factor"):
        cache.put(_key(1), np.zeros((4, 4), np.uint8), (8, 8), 0.0)
    with pytest.raises(ValueError, match="max_bytes"):
        ThumbCache(tmp_path, 0)


def test_the_bound_holds_after_many_puts(tmp_path: Path) -> None:
    bound = 64 * KIB  # about 14 entries of ~4.3 KiB
    cache = ThumbCache(tmp_path / "c", bound)
    for i in range(80):
        cache.put(_key(i), _noise(i), (640, 640), 10.0)
        assert _disk_bytes(tmp_path / "c") <= bound
    s = cache.stats()
    assert s["evictions"] > 50
    assert s["bytes"] == _disk_bytes(tmp_path / "c") and s["entries"] == len(
        _entries(tmp_path / "c")
    )
    # The newest entry always survives; the oldest went first.
    assert cache.get(_key(79)) is not None and cache.get(_key(0)) is None
    # An entry too large for the bound on its own is not kept (it would evict everything).
    cache.put(_key(1000), _noise(5, 512), (512, 512), 1.0)
    assert cache.get(_key(1000)) is None and cache.get(_key(79)) is not None


def test_least_recently_used_go_first(tmp_path: Path) -> None:
    one = len(_noise(0).tobytes())  # ~4 KiB; PNG overhead makes an entry a bit larger
    cache = ThumbCache(tmp_path, 6 * one)  # five entries fit, a sixth crosses the bound
    for i in range(5):
        cache.put(_key(i), _noise(i), (64, 64), 1.0)
    assert cache.get(_key(0)) is not None  # 0 is now the most recent; 1 the least
    assert cache.get(_key(2)) is not None
    cache.put(_key(5), _noise(5), (64, 64), 1.0)
    cache.put(_key(6), _noise(6), (64, 64), 1.0)
    present = {i for i in range(7) if (tmp_path / _key(i)[:2] / f"{_key(i)}.png").exists()}
    assert {0, 2, 5, 6} <= present  # touched and newest survive
    evicted = set(range(7)) - present
    assert {1, 3} <= evicted  # the least recently used went
    assert cache.stats()["evictions"] >= 2


def test_corrupt_entries_are_misses_and_removed(tmp_path: Path) -> None:
    cache = ThumbCache(tmp_path, 2**20)
    good = _noise(3)
    for i in range(4):
        cache.put(_key(i), good, (64, 64), 1.0)
    paths = [tmp_path / _key(i)[:2] / f"{_key(i)}.png" for i in range(4)]
    paths[0].write_bytes(b"not a png at all")
    paths[1].write_bytes(paths[1].read_bytes()[:200])  # truncated inside the image data
    paths[2].write_bytes(b"")
    # A valid entry copied under another key (its text chunk names the original key).
    other = tmp_path / _key(7)[:2] / f"{_key(7)}.png"
    other.parent.mkdir(exist_ok=True)
    other.write_bytes(paths[3].read_bytes())
    for i in range(3):
        assert cache.get(_key(i)) is None
        assert not paths[i].exists()
    assert cache.get(_key(7)) is None and not other.exists()
    np.testing.assert_array_equal(cache.get(_key(3)).pixels, good)  # type: ignore[union-attr]
    assert cache.stats()["misses"] == 4


def test_a_failed_write_is_skipped_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ThumbCache(tmp_path, 2**20)

    def disk_full(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    cache.put(_key(1), _noise(1), (64, 64), 1.0)
    monkeypatch.undo()
    assert cache.get(_key(1)) is None
    assert cache.stats()["write_errors"] == 1
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no temp file left behind


def test_keys_are_independent_and_file_names_carry_no_uri(tmp_path: Path) -> None:
    uri = "s3://ward-7/smith_john/chest.dcm"
    keys = {
        thumb_key(uri, 256),
        thumb_key(uri, 128),
        thumb_key(uri, 256, "1700000000:1234"),
        thumb_key(uri, 256, "1700000001:1234"),
        thumb_key(uri + "x", 256),
        thumb_key("s3://ward-7/smith_john/chest.dc", 256),
    }
    assert len(keys) == 6
    assert all(len(k) == 64 and set(k) <= set("0123456789abcdef") for k in keys)
    assert thumb_key(uri, 256) == thumb_key(uri, 256, "") == ThumbCache.thumb_key(uri, 256)
    cache = ThumbCache(tmp_path, 2**20)
    for k in keys:
        cache.put(k, _noise(1, 8), (8, 8), 1.0)
    names = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")]
    assert len(names) >= 6
    assert not any(part in n for n in names for part in ("ward", "smith", "chest", "s3"))
    # Keys become file names: nothing but our own digests is accepted.
    for bad in ("../../etc/passwd", "A" * 64, _key(1)[:63], "", _key(1) + "/x"):
        with pytest.raises(ValueError, match="hex"):
            cache.get(bad)


def test_clear_and_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUALITY_THUMB_CACHE_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("QUALITY_THUMB_CACHE_MB", "1.5")
    cache = ThumbCache.from_settings()
    assert cache.directory == tmp_path / "from-env" and cache.max_bytes == int(1.5 * 2**20)
    for i in range(3):
        cache.put(_key(i), _noise(i, 8), (8, 8), 1.0)
    (tmp_path / "from-env" / "README").write_text("not ours")  # other files are left alone
    cache.clear()
    assert _entries(tmp_path / "from-env") == [] and cache.stats()["entries"] == 0
    assert (tmp_path / "from-env" / "README").exists()


def test_threads_leave_a_consistent_cache(tmp_path: Path) -> None:
    bound = 96 * KIB
    cache = ThumbCache(tmp_path, bound)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(40):
                i = int(rng.integers(0, 30))  # threads collide on the same keys
                if rng.random() < 0.5:
                    cache.put(_key(i), _noise(i), (64, 64), float(i + 1))
                else:
                    got = cache.get(_key(i))
                    if got is not None:  # never half an entry, never another key's
                        np.testing.assert_array_equal(got.pixels, _noise(i))
                        assert got.factor == float(i + 1)
        except BaseException as exc:
            errors.append(exc)  # re-raised in the main thread below

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert _disk_bytes(tmp_path) <= bound  # one process: the bound holds without a scan
    _assert_consistent(tmp_path, bound, cache)


def _assert_consistent(folder: Path, bound: int, cache: ThumbCache) -> None:
    assert not list(folder.rglob("*.tmp"))  # every temp file renamed or removed
    cache.trim()
    assert _disk_bytes(folder) <= bound
    s = cache.stats()
    assert s["bytes"] == _disk_bytes(folder) and s["entries"] == len(_entries(folder))
    for path in _entries(folder):
        key = path.stem
        got = cache.get(key)
        assert got is not None, f"{path.name} is not a complete entry"
        i = round(got.factor) - 1
        assert key == _key(i)
        np.testing.assert_array_equal(got.pixels, _noise(i))


WRITER = """
import sys
import numpy as np
from quality.store.thumbcache import ThumbCache, thumb_key

cache = ThumbCache(sys.argv[1], int(sys.argv[2]))
for n in range(60):
    i = (n * 7 + int(sys.argv[3])) % 30
    pixels = np.random.default_rng(i).integers(0, 256, (64, 64), dtype=np.uint8)
    cache.put(thumb_key(f"s3://bucket/img{i}.dcm", 256), pixels, (64, 64), float(i + 1))
    cache.get(thumb_key(f"s3://bucket/img{(i + 3) % 30}.dcm", 256))
"""


def test_two_processes_leave_a_consistent_cache(tmp_path: Path) -> None:
    bound = 96 * KIB
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(bound), str(seed)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    _assert_consistent(tmp_path, bound, ThumbCache(tmp_path, bound))


# --------------------------------------------------------------------------- remote fakes


class FakeStore:
    """A remote store serving local files under ``root`` URIs; ``down`` makes it unreachable."""

    def __init__(self, root: str, files: dict[str, str]) -> None:
        self.root = root
        self.files = files
        self.down = False
        self.opens = 0

    def list(self) -> Iterator[Any]:
        return iter(())

    def open(self, uri: str) -> BinaryIO:
        self.opens += 1
        if self.down:
            raise StoreUnavailableError(uri, "connection refused after 4 attempts")
        if uri not in self.files:
            raise StoreError(uri, "no such object in the store")
        return io.BytesIO(Path(self.files[uri]).read_bytes())

    def local_path(self, uri: str) -> Path | None:
        return None


class RenderingStore(FakeStore):
    """Also renders thumbnails, like DICOMweb's ``/rendered``; ``rendering`` is what it
    returns (None: cannot render)."""

    def __init__(self, root: str, files: dict[str, str]) -> None:
        super().__init__(root, files)
        self.renders = 0
        self.rendering: Any = None

    def thumbnail(self, uri: str, max_side: int) -> Any:
        self.renders += 1
        if self.down:
            raise StoreUnavailableError(uri, "connection refused after 4 attempts")
        return self.rendering


@pytest.fixture
def remote(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeStore], FakeStore]:
    """Registers fake stores by root with :func:`quality.store.store_for_uri`."""
    stores: dict[str, FakeStore] = {}

    def lookup(root: str) -> FakeStore:
        if root not in stores:
            raise StoreUnavailableError(root, "no such fake store")
        return stores[root]

    monkeypatch.setattr(quality.store, "_remote_store", lookup)

    def add(store: FakeStore) -> FakeStore:
        stores[store.root] = store
        return store

    return add


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ThumbCache]:
    """A fresh on-disk cache in use by ``thumbs`` (restored afterwards), memory cleared."""
    monkeypatch.setattr(thumbs, "_disk_override", [])
    cache = ThumbCache(tmp_path / "thumbs", 16 * 2**20)
    thumbs.clear_caches(disk=cache)
    st.cache_resource.clear()
    yield cache
    thumbs.clear_caches()
    st.cache_resource.clear()


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the local decodes of ``thumbs``."""
    calls = {"decode": 0}
    load = thumbs.load_pixels

    def counting(path: Any) -> Any:
        calls["decode"] += 1
        return load(path)

    monkeypatch.setattr(thumbs, "load_pixels", counting)
    return calls


def _ramp(rows: int, cols: int) -> np.ndarray:
    return np.linspace(0, 4000, rows * cols).reshape(rows, cols)


# --------------------------------------------------------------------------- load_thumb


def test_local_thumbs_come_from_memory_then_disk(
    tmp_path: Path, disk: ThumbCache, counted: dict[str, int]
) -> None:
    path = write_dicom(tmp_path / "a.dcm", _ramp(300, 200), bits=12, window=(2000, 4000))
    first = thumbs.load_thumb(path, 64)
    assert counted["decode"] == 1
    assert first.shape == (300, 200) and first.factor == 5.0 and isinstance(first.factor, float)
    assert first.pixels.shape == (60, 40) and first.pixels.dtype == np.uint8
    assert disk.stats()["entries"] == 1
    # Memory level: no decode, no disk read.
    again = thumbs.load_thumb(path, 64)
    assert counted["decode"] == 1 and disk.stats()["hits"] == 0
    np.testing.assert_array_equal(again.pixels, first.pixels)
    # Disk level: memory forgotten (a new process), the disk still has it.
    thumbs.clear_caches()
    from_disk = thumbs.load_thumb(path, 64)
    assert counted["decode"] == 1 and disk.stats()["hits"] == 1
    assert (from_disk.shape, from_disk.factor) == (first.shape, first.factor)
    np.testing.assert_array_equal(from_disk.pixels, first.pixels)
    # Another size is another entry; a changed file (mtime and size) is decoded again.
    thumbs.load_thumb(path, 128)
    assert counted["decode"] == 2
    write_dicom(tmp_path / "a.dcm", _ramp(100, 100), bits=12)
    assert thumbs.load_thumb(path, 64).shape == (100, 100)
    assert counted["decode"] == 3


def test_missing_and_unreadable_local_files(tmp_path: Path, disk: ThumbCache) -> None:
    with pytest.raises(DicomReadError) as err:
        thumbs.load_thumb(str(tmp_path / "gone.dcm"))
    assert err.value.kind == "missing"
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a DICOM file")
    with pytest.raises(DicomReadError) as err:
        thumbs.load_thumb(str(bad))
    assert err.value.kind == "not_dicom"
    assert disk.stats()["entries"] == 0  # failures are not cached


def test_remote_thumbs_are_decoded_here_when_the_store_cannot_render(
    tmp_path: Path,
    disk: ThumbCache,
    remote: Callable[[FakeStore], FakeStore],
    counted: dict[str, int],
) -> None:
    uri = "s3://bucket/demo/a.dcm"
    path = write_dicom(tmp_path / "a.dcm", _ramp(256, 256), bits=12, window=(2000, 4000))
    store = remote(FakeStore("s3://bucket", {uri: path}))
    local = thumbs.load_thumb(path, 64)
    got = thumbs.load_thumb(uri, 64)
    assert store.opens == 1 and counted["decode"] == 2
    np.testing.assert_array_equal(got.pixels, local.pixels)
    assert (got.shape, got.factor) == ((256, 256), 4.0)
    # A new process: from disk, the store is not asked again.
    thumbs.clear_caches()
    np.testing.assert_array_equal(thumbs.load_thumb(uri, 64).pixels, local.pixels)
    assert store.opens == 1 and disk.stats()["hits"] == 1
    # A caller-given version (an S3 object replaced under its key) is a new entry.
    thumbs.load_thumb(uri, 64, version="2025-01-02T00:00:00")
    assert store.opens == 2
    # A key the store does not have: a read error naming the image, nothing cached.
    with pytest.raises(DicomReadError) as err:
        thumbs.load_thumb("s3://bucket/demo/missing.dcm", 64)
    assert err.value.kind == "read_error" and "missing.dcm" in err.value.uri


def test_server_rendered_thumbs_are_used_and_scaled(
    disk: ThumbCache,
    remote: Callable[[FakeStore], FakeStore],
    counted: dict[str, int],
) -> None:
    root = "dicomweb+http://pacs.test/dicom-web"
    uri = f"{root}/studies/1.2/series/1.3/instances/1.4"
    store = remote(RenderingStore(root, {}))
    rendered = _noise(7, 60)[:, :45].copy()  # a 600×450 image rendered at 60×45
    store.rendering = (rendered, (600, 450))
    got = thumbs.load_thumb(uri, 64)
    assert store.renders == 1 and store.opens == 0 and counted["decode"] == 0
    np.testing.assert_array_equal(got.pixels, rendered)
    assert got.shape == (600, 450) and got.factor == pytest.approx(10.0)
    # Boxes in original pixels land on the thumbnail at 1/factor.
    fig = thumbs.thumb_figure(got, {"D01": [100, 200, 300, 400]})
    rect = fig.layout.shapes[0]
    assert (rect.x0, rect.y0, rect.x1, rect.y1) == pytest.approx((10, 20, 30, 40))
    thumbs.clear_caches()
    np.testing.assert_array_equal(thumbs.load_thumb(uri, 64).pixels, rendered)
    assert store.renders == 1  # from disk
    # Larger than asked (a server ignoring the viewport): shrunk to fit.
    store.rendering = (np.full((200, 100), 9, np.uint8), (2000, 1000))
    big = thumbs.load_thumb(uri, 50)
    assert big.pixels.shape == (50, 25) and big.factor == pytest.approx(40.0)
    assert (big.pixels == 9).all()


def test_a_store_that_cannot_render_falls_back_to_decoding(
    tmp_path: Path,
    disk: ThumbCache,
    remote: Callable[[FakeStore], FakeStore],
    counted: dict[str, int],
) -> None:
    root = "dicomweb+http://pacs.test/dicom-web"
    uri = f"{root}/studies/1.2/series/1.3/instances/1.5"
    path = write_dicom(tmp_path / "b.dcm", _ramp(128, 64), bits=12)
    store = remote(RenderingStore(root, {uri: path}))
    got = thumbs.load_thumb(uri, 32)
    assert store.renders == 1 and store.opens == 1 and counted["decode"] == 1
    assert got.shape == (128, 64) and got.factor == 4.0 and got.pixels.shape == (32, 16)


def test_an_unreachable_store_fails_fast_and_says_so(
    tmp_path: Path,
    disk: ThumbCache,
    remote: Callable[[FakeStore], FakeStore],
) -> None:
    path = write_dicom(tmp_path / "k.dcm", _ramp(16, 16), bits=12)
    files = {f"s3://bucket/k{i}.dcm": path for i in range(4)}
    store = remote(FakeStore("s3://bucket", files))
    cached = thumbs.load_thumb("s3://bucket/k3.dcm")
    assert store.opens == 1
    store.opens = 0
    store.down = True
    with pytest.raises(StoreUnavailableError):
        thumbs.load_thumb("s3://bucket/k0.dcm")
    assert store.opens == 1
    # The rest of the gallery does not wait out the retries again, image by image.
    for uri in ("s3://bucket/k1.dcm", "s3://bucket/k2.dcm"):
        with pytest.raises(StoreUnavailableError, match="connection refused"):
            thumbs.load_thumb(uri)
        assert not thumbs.render_thumb(uri, key="t")  # a warning, not a traceback
    assert store.opens == 1
    thumbs.clear_caches()  # forgets the memo: asked again
    with pytest.raises(StoreUnavailableError):
        thumbs.load_thumb("s3://bucket/k1.dcm")
    assert store.opens == 2
    # What the caches hold is still shown while the store is down.
    thumbs.clear_caches()
    np.testing.assert_array_equal(thumbs.load_thumb("s3://bucket/k3.dcm").pixels, cached.pixels)
    assert thumbs.render_thumb("s3://bucket/k3.dcm", key="k3")
    assert store.opens == 2
    # A malformed remote URI is a StoreError, shown as a warning.
    with pytest.raises(StoreError):
        thumbs.load_thumb("s3:///no-bucket.dcm")
    assert not thumbs.render_thumb("s3:///no-bucket.dcm", key="u")


# --------------------------------------------------------------------------- viewer


def test_resolve_uri_passes_remote_uris_through(tmp_path: Path) -> None:
    for uri in (
        "s3://bucket/a/b.dcm",
        "dicomweb+https://pacs/dicom-web/studies/1/series/2/instances/3",
    ):
        assert viewer.resolve_uri(uri) == uri
        assert viewer._open(uri) == (uri, 0.0)
    path = write_dicom(tmp_path / "c.dcm", _ramp(8, 8))
    assert viewer.resolve_uri(path) == path
    assert viewer.resolve_uri("c.dcm", store=str(tmp_path)) == str(tmp_path / "c.dcm")
    with pytest.raises(DicomReadError, match="not in the image store"):
        viewer.resolve_uri("c.dcm", store="s3://bucket/prefix")  # never joined to a URI
    with pytest.raises(DicomReadError) as err:
        viewer.resolve_uri(str(tmp_path / "nope.dcm"))
    assert err.value.kind == "missing"


VIEWER = """
import streamlit as st

from quality.ui import viewer

viewer.render_image_viewer(st.session_state["uri"], key="v")
viewer.render_header_table(st.session_state["uri"], key="h")
"""


@pytest.fixture(autouse=True)
def _keep_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """AppTest installs the script as ``__main__`` for good; put the real one back after
    each test, or a later spawn/forkserver process pool would re-run the script."""
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])


def _viewer(tmp_path: Path, uri: str) -> AppTest:
    script = tmp_path / "viewer_app.py"
    script.write_text(VIEWER)
    at = AppTest.from_file(str(script), default_timeout=30)
    at.session_state["uri"] = uri
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_viewer_shows_remote_images_and_their_headers(
    tmp_path: Path, remote: Callable[[FakeStore], FakeStore]
) -> None:
    st.cache_data.clear()
    st.cache_resource.clear()
    uri = "s3://bucket/demo/ct.dcm"
    path = write_dicom(tmp_path / "ct.dcm", _ramp(64, 64), bits=12, window=(2000, 4000))
    store = remote(FakeStore("s3://bucket", {uri: path}))
    at = _viewer(tmp_path, uri)
    assert len(at.get("plotly_chart")) == 1 and not at.warning and not at.error
    assert "Header window: center 2000" in " ".join(c.value for c in at.caption)
    table = at.dataframe[0].value
    assert (
        "PatientName" not in set(table["keyword"])
        or (table.loc[table["keyword"] == "PatientName", "value"] == "«masked»").all()
    )
    assert "Rows" in set(table["keyword"])
    opens = store.opens
    at.selectbox(key="v_preset").set_value(viewer.AUTO).run()
    assert store.opens == opens  # a window change re-windows the cached pixels
    st.cache_data.clear()
    st.cache_resource.clear()


def test_viewer_says_when_the_store_is_down_or_the_image_missing(
    tmp_path: Path, remote: Callable[[FakeStore], FakeStore]
) -> None:
    st.cache_data.clear()
    st.cache_resource.clear()
    store = remote(FakeStore("s3://bucket", {}))
    at = _viewer(tmp_path, "s3://bucket/demo/gone.dcm")
    texts = [w.value for w in at.warning]
    assert len(texts) == 2 and all("`gone.dcm`" in t for t in texts)
    assert "not in the store" in texts[0] or "no such object" in texts[0]
    assert "Cannot read the header" in texts[1]
    store.down = True
    at = _viewer(tmp_path, "s3://bucket/demo/other.dcm")
    assert len(at.error) == 2 and all("not reachable" in e.value for e in at.error)
    assert all("`other.dcm`" in e.value for e in at.error)
    st.cache_data.clear()
    st.cache_resource.clear()
