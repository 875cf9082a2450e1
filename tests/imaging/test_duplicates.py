"""Exact and near duplicates (quality/imaging/duplicates.py).

Three layers:

- hashes on phantoms checkable by eye (smooth random fields, shifted, re-noised, re-typed);
- :func:`exact_duplicates` and :func:`near_duplicates` on hand-made rows, on SQLite and
  PostgreSQL (a fake loader stands in for the image store);
- detection against the seeded defects of the small demo (seed 0), with the figures printed
  (``pytest -s``) and in the assertion messages.

What counts on the demo
-----------------------
Truth set of a kind: the ``sop_uid`` of every ``defects.<kind>_duplicate`` record *and* the
``duplicate_of`` original it copies (both images are "a duplicate"). Predicted set: the
images ``exact_duplicates`` returns (exact), or the images with ``kind == "near"`` in
``near_duplicates`` (near). Recall = |pred ∩ truth| / |truth|; precision = |pred ∩ truth| /
|pred|. Every truth pair must also land in one cluster. The near-duplicate check runs on the
dataset ``chest-xray-demo`` (the scope whose splits matter); the whole-store run is checked
separately: its only extras are the demo's CT slices (see that test).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from sqlalchemy import select
from sqlalchemy.orm import Session

from quality.db.schema import Dataset, DatasetItem, DatasetVersion, Image, Series, Source, Study
from quality.db.session import make_engine
from quality.dicom import DecodedImage
from quality.errors import DicomReadError
from quality.imaging import duplicates as dup
from quality.imaging.duplicates import (
    NEAR_COLUMNS,
    cluster_pairs,
    difference_hashes,
    exact_duplicates,
    hamming_distance,
    hamming_pairs,
    near_duplicates,
    perceptual_hash,
    perceptual_hashes,
    spectral_signatures,
)


def phantom(seed: int, n: int = 256) -> np.ndarray:
    """A smooth random field plus fine texture, 12-bit range: unrelated for unrelated seeds."""
    rng = np.random.default_rng(seed)
    coarse = ndimage.gaussian_filter(rng.standard_normal((n, n)), n / 16)
    fine = ndimage.gaussian_filter(rng.standard_normal((n, n)), 1.5)
    img = coarse / coarse.std() + 0.3 * fine / fine.std()
    return (2048 + 500 * img).clip(0, 4095)


# --------------------------------------------------------------------------- hashes


def test_identical_images_hash_identically() -> None:
    img = phantom(1)
    assert perceptual_hash(img) == perceptual_hash(img.copy())
    assert int(hamming_distance(perceptual_hash(img), perceptual_hash(img.copy()))) == 0


def test_small_shift_and_noise_move_the_hash_little() -> None:
    img = phantom(2)
    rng = np.random.default_rng(0)
    moved = ndimage.shift(img, (3, -4), order=0, mode="nearest") * 1.02 + rng.normal(
        0, 8, img.shape
    )
    d = int(hamming_distance(perceptual_hash(img), perceptual_hash(moved)))
    assert d <= 6, f"shifted + re-noised copy is {d} bits away"


def test_unrelated_phantoms_are_far_apart() -> None:
    h = perceptual_hashes([phantom(s) for s in range(10, 20)])
    d = hamming_distance(h[:, None], h[None, :])
    off = d[~np.eye(10, dtype=bool)]
    assert off.min() >= 14, f"closest unrelated pair is {off.min()} bits apart"
    assert 24 <= off.mean() <= 40  # about half the 64 bits, as for independent hashes


def test_hash_is_stable_across_dtypes_and_affine_intensity() -> None:
    img8 = (phantom(3) / 16).astype(np.uint8)
    variants = [
        img8,
        img8.astype(np.uint16) * 16,
        img8.astype(np.int32) - 1000,
        img8.astype(np.float32) / 255.0,
        img8.astype(np.float64) * 3.5 + 7,
    ]
    hashes = {perceptual_hash(v) for v in variants}
    assert len(hashes) == 1


def test_inverted_image_is_far_from_its_original() -> None:
    img = phantom(4)
    d = int(hamming_distance(perceptual_hash(img), perceptual_hash(4095 - img)))
    assert d >= 56


def test_flat_image_hashes_to_zero_and_one_pixel_is_accepted() -> None:
    assert perceptual_hash(np.full((40, 30), 7.0)) == 0
    assert perceptual_hash(np.ones((1, 1))) == 0


def test_batched_hash_equals_single_and_takes_mixed_shapes() -> None:
    imgs = [phantom(5), phantom(6, 200)[:, :180], phantom(7, 512)]
    h = perceptual_hashes(imgs)
    assert h.dtype == np.uint64 and h.shape == (3,)
    assert [int(v) for v in h] == [perceptual_hash(i) for i in imgs]
    stack = np.stack([phantom(8), phantom(9)])
    assert list(perceptual_hashes(stack)) == [
        perceptual_hash(phantom(8)),
        perceptual_hash(phantom(9)),
    ]
    assert perceptual_hashes([]).shape == (0,)


def test_hash_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="2-D"):
        perceptual_hash(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="hash_size"):
        perceptual_hash(np.zeros((8, 8)), hash_size=16)
    with pytest.raises(ValueError, match="empty"):
        perceptual_hashes([np.zeros((0, 5))])


def test_difference_hash_separates_copies_from_strangers() -> None:
    a, b = phantom(11), phantom(12)
    h = difference_hashes([a, a * 1.1 + 5, b])
    assert int(hamming_distance(h[0], h[1])) == 0
    assert int(hamming_distance(h[0], h[2])) >= 14


def test_spectral_signature_is_shift_invariant_and_specific() -> None:
    a = phantom(13, 512)
    rng = np.random.default_rng(1)
    moved = ndimage.shift(a, (6, 6), order=0, mode="nearest") * 0.97 + rng.normal(0, 8, a.shape)
    s = spectral_signatures([a, moved, phantom(14, 512), np.zeros((64, 64))])
    assert float(s[0] @ s[1]) >= 0.95
    assert float(s[0] @ s[2]) < 0.5
    assert np.allclose(np.linalg.norm(s[:3], axis=1), 1, atol=1e-5) and not s[3].any()


def test_hamming_distance_counts_bits() -> None:
    assert int(hamming_distance(0, 2**64 - 1)) == 64
    assert hamming_distance([0b1011], [0b0001]).tolist() == [2]


def test_hamming_pairs_equal_brute_force_across_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    # Near copies: flip 0-3 low bits of the first 20 hashes.
    h = np.concatenate([base, base[:20] ^ rng.integers(0, 8, size=20).astype(np.uint64)])
    monkeypatch.setattr(dup, "_BLOCK_PAIRS", 7 * len(h))  # several blocks of 7 rows
    i, j, d = hamming_pairs(h, 3)
    full = hamming_distance(h[:, None], h[None, :])
    bi, bj = np.nonzero(np.triu(full <= 3, k=1))
    assert list(zip(i, j, strict=True)) == list(zip(bi, bj, strict=True))
    assert (d == full[bi, bj]).all()
    with pytest.raises(ValueError, match="max_hamming"):
        hamming_pairs(h, 65)


def test_cluster_pairs_is_deterministic_union_find() -> None:
    labels = cluster_pairs(7, [5, 1, 2], [6, 2, 4])
    # Components {1, 2, 4} (first node 1) and {5, 6}; 0 and 3 have no edge.
    assert labels.tolist() == [-1, 0, 0, -1, 0, 1, 1]
    assert cluster_pairs(3, [], []).tolist() == [-1, -1, -1]


# --------------------------------------------------------------------------- DB, hand-made


def _add_rows(session: Session) -> dict[str, Any]:
    """Six images of three patients; ``a1``/``a2``/``b1`` share pixels, ``c1``/``c2`` too.

    Dataset ``d`` v1 holds a1 (train), a2 (test), b1 (train), c1 (val); c2 and x1 are only
    in the store. ``x1`` has its own hash, ``y1`` none.
    """
    src = Source(name="Alpha")
    session.add(src)
    session.flush()
    images: dict[str, Image] = {}
    for key, patient, sha in [
        ("a1", "p1", "s" * 64), ("a2", "p1", "s" * 64), ("b1", "p2", "s" * 64),
        ("c1", "p3", "t" * 64), ("c2", "p3", "t" * 64), ("x1", "p3", "u" * 64),
        ("y1", "p3", None),
    ]:  # fmt: skip
        study = Study(study_uid=f"st-{key}", patient_key=patient, source_id=src.id)
        series = Series(series_uid=f"se-{key}", study=study)
        img = Image(sop_uid=f"sop-{key}", series=series, uri=f"/store/{key}.dcm", pixel_sha256=sha)
        session.add_all([study, series, img])
        images[key] = img
    ds = Dataset(name="d")
    session.add(ds)
    session.flush()
    v1 = DatasetVersion(dataset_id=ds.id, version="v1", content_hash="0" * 64)
    session.add(v1)
    session.flush()
    for key, split in [("a1", "train"), ("a2", "test"), ("b1", "train"), ("c1", "val")]:
        session.add(DatasetItem(version_id=v1.id, image_id=images[key].id, split=split))
    session.commit()
    return {"ids": {k: v.id for k, v in images.items()}, "dataset_id": ds.id, "version_id": v1.id}


def test_exact_duplicates_whole_store(session: Session) -> None:
    rows = _add_rows(session)
    ids = rows["ids"]
    out = exact_duplicates(session)
    assert out.columns.tolist() == dup.EXACT_COLUMNS
    assert out["image_id"].tolist() == [ids[k] for k in ("a1", "a2", "b1", "c1", "c2")]
    assert out["cluster_id"].tolist() == [0, 0, 0, 1, 1]
    assert out["cluster_size"].tolist() == [3, 3, 3, 2, 2]
    assert out["patient_key"].tolist() == ["p1", "p1", "p2", "p3", "p3"]
    assert set(out["source"]) == {"Alpha"} and out["split"].isna().all()


def test_exact_duplicates_in_a_dataset_version(session: Session) -> None:
    rows = _add_rows(session)
    ids = rows["ids"]
    for kw in ({"dataset_id": rows["dataset_id"]}, {"version_id": rows["version_id"]}):
        out = exact_duplicates(session, **kw)
        # c2 is not in the version, so c1 has no partner there.
        assert out["image_id"].tolist() == [ids["a1"], ids["a2"], ids["b1"]], kw
        assert out["split"].tolist() == ["train", "test", "train"]
        assert out["cluster_id"].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="does not exist"):
        exact_duplicates(session, version_id=9999)
    with pytest.raises(ValueError, match="no versions"):
        exact_duplicates(session, dataset_id=9999)


def test_exact_duplicates_empty_db(session: Session) -> None:
    out = exact_duplicates(session)
    assert out.empty and out.columns.tolist() == dup.EXACT_COLUMNS


def _fake_loader(pixels: dict[str, np.ndarray | None]) -> Any:
    def load(uri: str) -> DecodedImage:
        arr = pixels[uri]
        if arr is None:
            raise DicomReadError(uri, "truncated", "file ends inside PixelData")
        return DecodedImage(frames=arr[None].astype(np.float32), photometric="MONOCHROME2",
                            bits_stored=12)  # fmt: skip

    return load


def test_near_duplicates_with_fake_store(session: Session) -> None:
    rows = _add_rows(session)
    ids = rows["ids"]
    rng = np.random.default_rng(0)
    a = phantom(21)
    near_a = ndimage.shift(a, (4, -3), order=0, mode="nearest") + rng.normal(0, 8, a.shape)
    pixels = {
        "/store/a1.dcm": a, "/store/a2.dcm": a, "/store/b1.dcm": a,
        "/store/c1.dcm": phantom(22), "/store/c2.dcm": None,  # unreadable
        "/store/x1.dcm": near_a,
        "/store/y1.dcm": np.full((64, 64), 100.0),  # flat
    }  # fmt: skip
    calls: list[tuple[int, int, str]] = []
    out = near_duplicates(session, loader=_fake_loader(pixels), progress=lambda *a: calls.append(a))
    assert out.columns.tolist() == NEAR_COLUMNS
    assert out["image_id"].tolist() == [ids[k] for k in ("a1", "a2", "b1", "x1")]
    assert out["kind"].tolist() == ["exact", "exact", "exact", "near"]
    assert out["cluster_id"].tolist() == [0] * 4 and out["cluster_size"].tolist() == [4] * 4
    assert out["hamming_to_first"].iloc[0] == 0 and out["cosine_to_first"].isna().all()
    assert out["similarity_to_first"].min() >= 0.9
    skipped = out.attrs["skipped"]
    assert dict(zip(skipped["sop_uid"], skipped["reason"], strict=True)) == {
        "sop-c2": "truncated",
        "sop-y1": "flat",
    }
    assert calls[0] == (0, 7, "near-duplicates") and calls[-1] == (7, 7, "near-duplicates")

    # An embedding that disagrees vetoes the look-alike, never the identical copies.
    emb = pd.DataFrame({"image_id": [ids["a1"], ids["a2"], ids["b1"], ids["x1"]],
                        "embedding": [[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]})  # fmt: skip
    vetoed = near_duplicates(session, loader=_fake_loader(pixels), embeddings=emb)
    assert vetoed["image_id"].tolist() == [ids["a1"], ids["a2"], ids["b1"]]
    assert vetoed["cosine_to_first"].tolist() == [1.0, 1.0, 0.0]
    # A pair with a missing vector is kept on the image evidence alone.
    kept = near_duplicates(session, loader=_fake_loader(pixels), embeddings=emb.iloc[[0, 3]])
    assert ids["x1"] in set(kept["image_id"])

    # Dataset scope: only a1, a2, b1, c1 are in it.
    report = dup.duplicate_report(
        session, dataset_id=rows["dataset_id"], loader=_fake_loader(pixels)
    )
    assert report.near["image_id"].tolist() == [ids["a1"], ids["a2"], ids["b1"]]
    assert report.n_exact_images == 3 and report.n_near_images == 0
    assert report.skipped.empty
    issues = report.issues.set_index("sop_uid")
    assert issues.loc["sop-b1", "is_exact_duplicate_issue"]
    assert not issues["is_near_duplicate_issue"].any()
    assert issues.loc["sop-c1", "near_duplicate_score"] > 0.3
    assert json.dumps(report.as_dict())


def test_near_duplicates_rejects_bad_parameters(session: Session) -> None:
    with pytest.raises(ValueError, match="max_hamming"):
        near_duplicates(session, max_hamming=-1)
    with pytest.raises(ValueError, match="min_similarity"):
        near_duplicates(session, min_similarity=2.0)
    with pytest.raises(ValueError, match="workers"):
        near_duplicates(session, workers=0)


# --------------------------------------------------------------------------- the demo


@pytest.fixture(scope="module")
def small_demo(small_demo_dir: Path) -> Iterator[tuple[Session, dict]]:
    """The small demo (seed 0, ~380 images): 3 exact and 3 near duplicates are seeded."""
    out = small_demo_dir
    engine = make_engine(f"sqlite:///{out / 'demo.db'}")
    with Session(engine) as session:
        truth = json.loads((out / "demo_truth.json").read_text())
        yield session, truth
    engine.dispose()


def _truth_set(truth: dict, kind: str) -> tuple[set[str], list[tuple[str, str]]]:
    records = truth["defects"][kind]
    pairs = [(r["sop_uid"], r["duplicate_of"]) for r in records]
    return {s for p in pairs for s in p}, pairs


def _scores(pred: set[str], true: set[str]) -> tuple[float, float]:
    tp = len(pred & true)
    return tp / len(true), (tp / len(pred) if pred else 0.0)


def _together(frame: pd.DataFrame, pairs: list[tuple[str, str]]) -> bool:
    cluster = dict(zip(frame["sop_uid"], frame["cluster_id"], strict=True))
    return all(a in cluster and cluster.get(a) == cluster.get(b) for a, b in pairs)


def test_demo_exact_duplicates(small_demo: tuple[Session, dict]) -> None:
    session, truth = small_demo
    true, pairs = _truth_set(truth, "exact_duplicate")
    out = exact_duplicates(session)
    recall, precision = _scores(set(out["sop_uid"]), true)
    print(f"\nexact duplicates (pixel sha256, SQL): recall {recall:.2f}, precision {precision:.2f}"
          f" ({len(out)} images flagged, {len(true)} in truth)")  # fmt: skip
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)
    assert _together(out, pairs)


def test_demo_near_duplicates(small_demo: tuple[Session, dict]) -> None:
    session, truth = small_demo
    true, pairs = _truth_set(truth, "near_duplicate")
    true_exact, exact_pairs = _truth_set(truth, "exact_duplicate")
    dataset_id = session.scalar(select(Dataset.id).where(Dataset.name == "chest-xray-demo"))
    report = dup.duplicate_report(session, dataset_id=dataset_id, workers=2)
    near = report.near
    pred = set(near.loc[near["kind"] == "near", "sop_uid"])
    recall, precision = _scores(pred, true)
    # (The pHash alone needs 4-6 bits to reach recall 1 here, and then flags ~270 images:
    # precision 0.02-0.03; see near_duplicates' docstring. Not rerun: it costs a decode.)
    print(f"\nnear duplicates (pHash <= {report.max_hamming} bits + spectral cosine >= "
          f"{dup.DEFAULT_MIN_SIMILARITY}): recall {recall:.2f}, precision {precision:.2f} "
          f"({len(pred)} flagged near, {len(true)} in truth)")  # fmt: skip
    assert recall >= 0.9 and precision >= 0.9, (recall, precision)
    assert _together(near, pairs)
    # The exact copies come out of the same scan with kind "exact", not "near".
    exact = set(near.loc[near["kind"] == "exact", "sop_uid"])
    assert exact == true_exact and _together(near, exact_pairs)
    # The flat blank and the deleted file are reported, not dropped silently.
    assert set(report.skipped["reason"]) <= {"flat", "read_error"} and len(report.skipped) >= 1


def test_demo_whole_store_extras_are_ct_slices(small_demo: tuple[Session, dict]) -> None:
    """Outside the dataset, the demo's CT series are flagged: one phantom, three noises.

    The demo renders every CT series from the same phantom (only the noise differs), so
    slice k of one series is a near copy of slice k of the others. That is what the detector
    reports, and nothing else beyond the seeded defects.
    """
    session, truth = small_demo
    true, _ = _truth_set(truth, "near_duplicate")
    near = near_duplicates(session, workers=2)
    extra = near[(near["kind"] == "near") & ~near["sop_uid"].isin(true)]
    kinds = {truth["images"][s]["kind"] for s in extra["sop_uid"]}
    assert kinds == {"ct"}, kinds
    z = session.execute(
        select(Image.sop_uid, Image.instance_number).where(Image.sop_uid.in_(extra["sop_uid"]))
    ).all()
    slice_of = dict(z)
    per_cluster = extra.groupby("cluster_id")["sop_uid"].agg(lambda s: {slice_of[u] for u in s})
    assert (per_cluster.map(len) == 1).all()  # each cluster is one slice position
