"""Dice for mask tasks in the doctor report, on a small synthetic task (SQLite and PostgreSQL).

Twelve 32 × 32 images, each with a true disk; three careful annotators draw the disk with
sub-pixel boundary noise, one sloppy annotator draws it shifted by 4 px and 3 px wider.
Masks are stored with :func:`quality.agreement.masks.encode_mask`.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass

import numpy as np
import pytest
from numpy.typing import NDArray
from sqlalchemy.orm import Session

from quality.agreement.consensus import STAPLE
from quality.agreement.masks import decode_mask, encode_mask
from quality.agreement.spatial import dice
from quality.db import queries
from quality.db.schema import (
    Annotation,
    Annotator,
    Dataset,
    Image,
    LabelingTask,
    ReferenceLabel,
    Series,
    Source,
    Study,
)
from quality.doctors import DICE_FLAG, TEAM_COLUMNS, build_doctor_report
from quality.errors import LabelDataError

SIZE = 32
N_IMAGES = 12
CAREFUL = ("C1", "C2", "C3")
SLOPPY = "S1"
T0 = dt.datetime(2024, 3, 4, 9, 0, tzinfo=dt.UTC)


def _disk(cy: float, cx: float, r: float) -> NDArray[np.bool_]:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


@dataclass
class MaskTask:
    task_id: int
    image_ids: list[int]
    drawn: dict[tuple[int, str], NDArray[np.bool_]]  # (image id, code) -> decodable mask
    truth: dict[int, NDArray[np.bool_]]


def _build(
    session: Session, *, corrupt: bool = False, gold: str | None = None, silent: bool = False
) -> MaskTask:
    """The synthetic task; ``corrupt`` adds two bad blobs, ``gold`` stores that annotator's
    masks as the gold reference masks, ``silent`` adds annotator N1 who labels every image
    "normal" without drawing a mask."""
    rng = np.random.default_rng(7)
    source = Source(name="site-m")
    study = Study(study_uid="1.2.9.1", patient_key="p" * 32, source=source)
    series = Series(series_uid="1.2.9.1.1", study=study)
    images = [
        Image(sop_uid=f"1.2.9.1.1.{i}", series=series, uri=f"mem://m/{i}.dcm", rows=SIZE, cols=SIZE)
        for i in range(N_IMAGES)
    ]
    dataset = Dataset(name="masks")
    session.add_all([dataset, *images])
    session.flush()
    task = LabelingTask(
        dataset_id=dataset.id, name="lesion-mask", kind="mask", classes=["normal", "lesion"]
    )
    people = {c: Annotator(code=c, kind="doctor") for c in (*CAREFUL, SLOPPY, "N1")}
    session.add_all([task, *people.values()])
    session.flush()

    drawn: dict[tuple[int, str], NDArray[np.bool_]] = {}
    truth: dict[int, NDArray[np.bool_]] = {}
    rows = []
    for i, image in enumerate(images):
        cy, cx = rng.uniform(11, 21, size=2)
        r = rng.uniform(6, 8)
        truth[image.id] = _disk(cy, cx, r)
        for j, code in enumerate((*CAREFUL, SLOPPY)):
            if code == SLOPPY:
                m = _disk(cy + 4, cx + 4 * (-1) ** i, r + 3)
            else:
                dy, dx, dr = rng.normal(0, 0.35, size=3)
                m = _disk(cy + dy, cx + dx, r + dr)
            drawn[image.id, code] = m
            rows.append(
                Annotation(
                    task_id=task.id,
                    image_id=image.id,
                    annotator_id=people[code].id,
                    label="lesion",
                    mask=encode_mask(m),
                    created_at=T0 + dt.timedelta(days=i % 3, minutes=10 * i + j),
                    duration_s=30.0 + j + i,
                )
            )
            if gold == code:
                rows.append(
                    ReferenceLabel(
                        task_id=task.id,
                        image_id=image.id,
                        kind="gold",
                        label="lesion",
                        mask=encode_mask(m),
                    )
                )
        if silent:
            rows.append(
                Annotation(
                    task_id=task.id,
                    image_id=image.id,
                    annotator_id=people["N1"].id,
                    label="normal",
                    created_at=T0 + dt.timedelta(days=i % 3, minutes=10 * i + 5),
                    duration_s=20.0,
                )
            )
    if corrupt:
        # C1 on image 0: not zlib at all; C2 on image 1: decompresses to the wrong size.
        bad = {
            (images[0].id, "C1"): b"not a zlib stream",
            (images[1].id, "C2"): zlib.compress(bytes(10)),
        }
        for row in rows:
            key = (row.image_id, next(c for c, a in people.items() if a.id == row.annotator_id))
            if isinstance(row, Annotation) and key in bad:
                row.mask = bad[key]
                del drawn[key]
    session.add_all(rows)
    session.commit()
    return MaskTask(task.id, [im.id for im in images], drawn, truth)


# --------------------------------------------------------------------------- storage


def test_encode_decode_round_trip_and_c_order():
    m = np.zeros((3, 5), dtype=bool)
    m[0, 4] = m[2, 1] = True
    blob = encode_mask(m)
    assert np.frombuffer(zlib.decompress(blob), np.uint8)[4] == 1  # row-major: (0, 4) is 4th
    np.testing.assert_array_equal(decode_mask(blob, (3, 5)), m)
    # 0/255 masks written by other tools decode the same.
    np.testing.assert_array_equal(decode_mask(zlib.compress(m.astype(np.uint8) * 255), (3, 5)), m)


@pytest.mark.parametrize(
    ("blob", "shape", "match"),
    [
        (b"garbage", (2, 2), "does not decompress"),
        (zlib.compress(bytes(5)), (2, 2), "expected rows × cols"),
        (zlib.compress(bytes(4)), (None, 2), "unknown"),
    ],
)
def test_decode_rejects_bad_blobs(blob: bytes, shape: tuple, match: str):
    with pytest.raises(LabelDataError, match=match):
        decode_mask(blob, shape)


def test_encode_rejects_non_binary():
    with pytest.raises(LabelDataError):
        encode_mask(np.array([[0, 2]]))
    with pytest.raises(LabelDataError):
        encode_mask(np.zeros(4, dtype=bool))


# --------------------------------------------------------------------------- report


def test_mask_query_reads_only_the_task(session: Session):
    built = _build(session)
    first = session.get(LabelingTask, built.task_id)
    assert first is not None
    other = LabelingTask(dataset_id=first.dataset_id, name="other", kind="mask", classes=["lesion"])
    session.add(other)
    session.flush()
    session.add(
        Annotation(
            task_id=other.id,
            image_id=built.image_ids[0],
            annotator_id=1,
            label="lesion",
            mask=encode_mask(np.ones((SIZE, SIZE), bool)),
            created_at=T0,
        )
    )
    session.commit()
    masks = queries.task_masks(session, built.task_id)
    assert list(masks.columns) == queries.TASK_MASK_COLUMNS
    assert len(masks) == N_IMAGES * 4
    assert (masks["rows"] == SIZE).all() and (masks["cols"] == SIZE).all()
    row = masks.iloc[0]
    np.testing.assert_array_equal(
        decode_mask(row["mask"], (row["rows"], row["cols"])),
        built.drawn[int(row["item_id"]), row["annotator_id"]],
    )
    assert len(queries.task_masks(session, other.id)) == 1


def test_sloppy_annotator_has_lowest_dice_and_is_flagged(session: Session):
    built = _build(session, corrupt=True)
    report = build_doctor_report(session, built.task_id, n_resamples=20)
    team = report.team.set_index("code")
    assert list(report.team.columns) == TEAM_COLUMNS

    assert team["dice"].idxmin() == SLOPPY
    assert team.at[SLOPPY, "dice"] < DICE_FLAG
    assert "low Dice" in team.at[SLOPPY, "flags"]
    for code in CAREFUL:
        assert team.at[code, "dice"] > 0.85
        assert "low Dice" not in team.at[code, "flags"]
    assert (team.loc[list(CAREFUL), "staple_specificity"] > 0.95).all()
    assert team["staple_specificity"].idxmin() == SLOPPY  # its dilated disk over-calls

    # The two corrupt blobs: left out, counted and named, not a crash.
    assert report.n_masks_dropped == 2 and report.n_dropped == 2
    assert len(report.warnings) == 2
    assert any("C1" in w and "does not decompress" in w for w in report.warnings)
    assert any("C2" in w and "expected rows × cols" in w for w in report.warnings)

    # Hand check of one annotator: the same rule recomputed with the reference dice().
    expected = []
    for item in built.image_ids:
        raters = [c for c in (*CAREFUL, SLOPPY) if (item, c) in built.drawn]
        est = STAPLE().fit(np.stack([built.drawn[item, c] for c in raters])).estimate_ > 0.5
        if (item, SLOPPY) in built.drawn:
            expected.append(dice(built.drawn[item, SLOPPY], est))
    assert team.at[SLOPPY, "dice"] == pytest.approx(np.mean(expected))


def test_exports_carry_the_dice_column(session: Session):
    built = _build(session, corrupt=True)
    report = build_doctor_report(session, built.task_id, n_resamples=20)
    md = report.to_markdown()
    header = next(line for line in md.splitlines() if line.startswith("| rank"))
    assert "| Dice |" in header
    assert "low Dice (Dice < 0.7)" in md
    assert "## Warnings" in md and "2 mask(s) that could not be decoded" in md
    assert "<th>Dice</th>" in report.to_html()
    assert "dice" in report.to_csv().splitlines()[0].split(",")
    payload = report.as_dict()
    assert payload["n_masks_dropped"] == 2
    assert {r["code"] for r in payload["team"] if r["dice"] is not None} == {*CAREFUL, SLOPPY}


def test_gold_masks_are_the_consensus(session: Session):
    built = _build(session, gold=SLOPPY)
    report = build_doctor_report(session, built.task_id, n_resamples=20)
    team = report.team.set_index("code")
    assert team.at[SLOPPY, "dice"] == pytest.approx(1.0)
    assert (team.loc[list(CAREFUL), "dice"] < DICE_FLAG).all()
    # No STAPLE ran: every image has a gold mask.
    assert team["staple_sensitivity"].isna().all()


def test_an_annotator_without_masks_scores_zero_on_lesions(session: Session):
    built = _build(session, silent=True)
    report = build_doctor_report(session, built.task_id, n_resamples=20)
    team = report.team.set_index("code")
    assert team.at["N1", "dice"] == 0.0  # empty answer against a non-empty consensus
    assert "low Dice" in team.at["N1", "flags"]
    assert np.isnan(team.at["N1", "staple_sensitivity"])  # never a STAPLE rater
    assert (team.loc[list(CAREFUL), "dice"] > 0.85).all()
