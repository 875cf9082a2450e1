"""Benchmark: the Spot-check page re-rendered after a verdict, 2048 × 2048 16-bit images,
against a naive page doing the same job.

Usage::

    .venv/bin/python bench/spot_check.py [--runs 5] [--side 2048]

``bench/viewer.py`` times the viewer alone; this times the whole page as a clinician uses it.
In a temp dir it writes ``2 * runs + 4`` distinct ``side``² DICOMs (chest phantoms of
:mod:`quality.demo.phantoms` scaled to 16 bits), a migrated SQLite DB with one model version
predicting every image (label, score, box) and a review session over all of them. Then,
each through :class:`streamlit.testing.v1.AppTest` (a real script run), it times

* **ours, verdict → next study**: ``app.py`` on the Spot-check page; click *Agree*. The run
  writes the verdict (:func:`quality.review.submit_verdict`, an upsert), moves to the next
  unreviewed study and renders everything the page shows: router and sidebar, pickers,
  progress, the viewer on the *next* image (never seen before: decode, downsample to 1024²,
  window, PNG), its overlays, the verdict form, and the summary tab (its cached agreement
  tables are dropped by the write and rebuilt);
* **ours, verdict on the same study** (a re-submission, or the last study): the image is
  in the viewer's cache, everything else as above;
* **peer (naive)**: the same page written the obvious way: items re-read with the ORM on
  every run, the verdict written as select-then-insert-or-update, the image read with
  ``pydicom.dcmread`` + ``pixel_array`` + Modality LUT and shown at full resolution with
  ``px.imshow(binary_string=True)``, no caching; timed for the same two flows (it pays the
  decode on both).

Each flow is warmed up once, then run ``--runs`` times (median printed), with the ratios
peer / ours. Also printed: the DB write alone, and the AppTest floor (a script holding only a
button: AppTest polls the script thread, which adds to every rerun on both sides).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from quality import review as rv  # noqa: E402
from quality.db.schema import (  # noqa: E402
    Image,
    Model,
    ModelVersion,
    Prediction,
    Series,
    Source,
    Study,
)
from quality.db.session import make_engine, upgrade  # noqa: E402
from quality.demo import phantoms  # noqa: E402
from quality.ui import data  # noqa: E402

REVIEWER = "bench-reviewer"
CREATED = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)

PEER = """
import datetime as dt

import numpy as np
import plotly.express as px
import pydicom
import streamlit as st
from pydicom.pixels import apply_modality_lut
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from quality.db.schema import Image, Prediction, Review, ReviewSessionItem

spec = st.session_state["spec"]


@st.cache_resource
def engine(url):
    return create_engine(url)


def items():
    with Session(engine(spec["url"])) as s:
        return s.execute(
            select(Prediction.id, Image.uri, Prediction.label, Prediction.score)
            .select_from(ReviewSessionItem)
            .join(Prediction, Prediction.id == ReviewSessionItem.prediction_id)
            .join(Image, Image.id == Prediction.image_id)
            .where(ReviewSessionItem.session_id == spec["session_id"])
            .order_by(ReviewSessionItem.position)
        ).all()


def verdict(pid, value, move):
    now = dt.datetime.now(dt.UTC)
    with Session(engine(spec["url"])) as s:
        row = s.scalars(
            select(Review).where(Review.prediction_id == pid, Review.reviewer_id == spec["uid"])
        ).one_or_none()
        if row is None:
            s.add(Review(prediction_id=pid, reviewer_id=spec["uid"], verdict=value,
                         created_at=now, updated_at=now))
        else:
            row.verdict, row.updated_at = value, now
        s.commit()
    if move:
        st.session_state["pos"] = st.session_state.get("pos", 0) + 1


rows = items()
pos = min(st.session_state.get("pos", 0), len(rows) - 1)
pid, uri, label, score = rows[pos]
st.progress(pos / len(rows), text=f"{pos} of {len(rows)}")
ds = pydicom.dcmread(uri)
img = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
lo, hi = np.percentile(img, [0.5, 99.5])
shown = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
st.plotly_chart(px.imshow(shown, binary_string=True), key="figure")
st.metric("Model says", label)
st.metric("Score", f"{score:.3f}")
move = st.session_state.get("move", True)
st.button("Agree", key="agree", on_click=verdict, args=(pid, "agree", move))
"""


def write_dicom(path: Path, side: int, seed: int) -> None:
    """A ``side``² 16-bit MONOCHROME2 chest phantom, uncompressed."""
    rng = np.random.default_rng(seed)
    img = phantoms.chest_radiograph(rng, phantoms.chest_anatomy(rng), None, side, side)
    pixels = np.clip(img / 4095.0 * 65535.0, 0, 65535).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "DX"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def build(tmp: Path, side: int, n: int) -> tuple[str, int, int, list[int]]:
    """The DB: ``n`` images, one shadow model version predicting each, a review session of
    all of them. Returns (url, session id, reviewer id, prediction ids in review order)."""
    url = f"sqlite:///{tmp / 'spot.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as s:
        src = Source(name="bench_site")
        s.add(src)
        s.flush()
        mdl = Model(name="bench-model")
        s.add(mdl)
        s.flush()
        mv = ModelVersion(model_id=mdl.id, version="v2", status="shadow")
        s.add(mv)
        s.flush()
        for i in range(n):
            path = tmp / f"img{i:03d}.dcm"
            write_dicom(path, side, seed=i)
            study = Study(study_uid=f"2.25.{i + 1}", patient_key=f"k{i}", source_id=src.id)
            s.add(study)
            s.flush()
            series = Series(series_uid=f"2.25.1{i + 1}", study_id=study.id)
            s.add(series)
            s.flush()
            img = Image(
                sop_uid=f"2.25.2{i + 1}", series_id=series.id, uri=str(path), rows=side, cols=side
            )
            s.add(img)
            s.flush()
            q = side / 2048
            s.add(
                Prediction(
                    model_version_id=mv.id, image_id=img.id, label="nodule", score=0.7,
                    bbox=[520 * q, 720 * q, 880 * q, 1080 * q], latency_ms=50.0,
                    created_at=CREATED,
                )
            )  # fmt: skip
        s.flush()
        uid = rv.ensure_reviewer(s, REVIEWER)
        info = rv.create_session(s, mv.id, "random", n, 0, created_by=uid)
        s.commit()
        order = list(rv.session_items(s, info.id)["prediction_id"])
    engine.dispose()
    return url, info.id, uid, [int(p) for p in order]


def timed(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _checked(at: AppTest) -> AppTest:
    if at.exception:
        raise SystemExit(f"the script failed: {[e.value for e in at.exception]}")
    if at.error:
        raise SystemExit(f"the page shows an error: {[e.value for e in at.error]}")
    return at


def _study(at: AppTest) -> str:
    return next((m.value for m in at.markdown if str(m.value).startswith("#### Study")), "?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per flow (median)")
    parser.add_argument("--side", type=int, default=2048, help="image side in pixels")
    args = parser.parse_args(argv)
    runs = max(3, args.runs)
    n = 2 * runs + 4  # every "next study" run must meet an image not decoded yet

    with tempfile.TemporaryDirectory(prefix="bench-spot-") as tmp:
        tmpdir = Path(tmp)
        t0 = time.perf_counter()
        url, session_id, uid, order = build(tmpdir, args.side, n)
        print(f"setup: {n} DICOMs of {args.side}² and the DB in {time.perf_counter() - t0:.1f} s")
        os.environ["QUALITY_DB_URL"] = url
        os.chdir(ROOT)

        # ---------------------------------------------------------------- ours
        data.clear_caches()
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
        at.session_state["spot_reviewer"] = REVIEWER
        _checked(at.run())
        _checked(at.switch_page("pages/spot_check.py").run())

        def agree() -> None:
            _checked(at.button(key="spot_verdict_agree").click().run())

        agree()  # warm-up: study 1 → study 2
        before = _study(at)
        t_next = timed(agree, runs)
        after = _study(at)
        # Every remaining study reviewed outside the page: a verdict now stays on the study.
        engine = make_engine(url)
        with Session(engine) as s:
            for pid in order:
                rv.submit_verdict(s, pid, uid, "unsure")
        engine.dispose()
        _checked(at.button(key="spot_todo").click().run())
        agree()  # warm-up on the same study
        same = _study(at)
        t_same = timed(agree, runs)
        assert _study(at) == same, "the page moved although every study was done"
        engine = make_engine(url)
        with Session(engine) as s:
            t_write = timed(lambda: rv.submit_verdict(s, order[0], uid, "agree"), 5 * runs)
        engine.dispose()

        # ---------------------------------------------------------------- peer
        peer_script = tmpdir / "peer.py"
        peer_script.write_text(PEER)
        spec = {"url": url, "session_id": session_id, "uid": uid}
        pt = AppTest.from_file(str(peer_script), default_timeout=300)
        pt.session_state["spec"] = spec
        pt.session_state["pos"] = 1
        _checked(pt.run())

        def peer_agree() -> None:
            _checked(pt.button(key="agree").click().run())

        peer_agree()  # warm-up
        p_next = timed(peer_agree, runs)
        pt.session_state["move"] = False
        peer_agree()
        p_same = timed(peer_agree, runs)

        bare = tmpdir / "bare.py"
        bare.write_text('import streamlit as st\nst.button("Agree", key="agree")\n')
        bt = _checked(AppTest.from_file(str(bare)).run())
        t_floor = timed(lambda: _checked(bt.button(key="agree").click().run()), runs)

    print(
        f"Spot-check page, {args.side}×{args.side} 16-bit DICOMs, median of {runs} runs after "
        f"warm-up (ours went from '{before}' to '{after}')"
    )
    rows = [
        ("ours, verdict → next study (new image)", t_next),
        ("ours, verdict on the same study (cached image)", t_same),
        ("peer (naive), verdict → next study", p_next),
        ("peer (naive), verdict on the same study", p_same),
        ("ours, the DB write alone (submit_verdict)", t_write),
        ("AppTest floor: a script with only a button", t_floor),
    ]
    for name, t in rows:
        print(f"  {name:<48} {t * 1000:8.1f} ms")
    print(f"ratio peer / ours (verdict → next study): {p_next / t_next:.2f}x")
    print(f"ratio peer / ours (verdict on the same study): {p_same / t_same:.2f}x")
    print(
        json.dumps(
            {
                "side": args.side,
                "runs": runs,
                "ours_next_s": t_next,
                "ours_same_s": t_same,
                "peer_next_s": p_next,
                "peer_same_s": p_same,
                "write_s": t_write,
                "apptest_floor_s": t_floor,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
