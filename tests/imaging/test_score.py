"""score_uris / score_images: rows, resumability, unreadable files, OOD, Dask, CLI."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import copy_demo_db
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from quality.db.schema import Image, ImageQuality
from quality.imaging import metrics as qm
from quality.imaging import model as qmodel
from quality.imaging import score as qs
from quality.ingest import ingest

DATASET = "chest-xray-demo"


@pytest.fixture(scope="module")
def net() -> qmodel.IQANet:
    """A seeded random network: the plumbing does not depend on the shipped weights."""
    torch.manual_seed(0)
    return qmodel.IQANet().eval()


def _rows(session: Session) -> pd.DataFrame:
    cols = [c.name for c in ImageQuality.__table__.columns]
    return pd.DataFrame(
        session.execute(select(*ImageQuality.__table__.columns).order_by(ImageQuality.image_id)),
        columns=cols,
    )


@pytest.fixture
def store(tiny_demo: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny demo's DICOM files (tests may break one)."""
    dest = tmp_path / "dicom"
    shutil.copytree(tiny_demo / "dicom", dest)
    return dest


def test_score_uris_fields_and_bad_file(tiny_demo: Path, tmp_path: Path, net: Any) -> None:
    files = sorted((tiny_demo / "dicom").rglob("*.dcm"))[:3]
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a dicom file at all")
    out = qs.score_uris([str(files[0]), str(bad), str(files[1])], model=net, batch_size=2)
    assert [r["uri"] for r in out] == [str(files[0]), str(bad), str(files[1])]
    assert out[1]["error_kind"] in {"not_dicom", "read_error", "truncated"}
    for r in (out[0], out[2]):
        assert set(qm.METRIC_COLUMNS) <= set(r)
        assert r["defect_type"] in qmodel.DEFECT_CLASSES
        assert 0 <= r["quality_score"] <= 1
        assert len(r["embedding"]) == qmodel.EMBED_DIM
        assert isinstance(r["is_blank"], bool)


def test_local_scoring_rows_rerun_and_unreadable(
    session: Session, store: Path, net: Any, tmp_path: Path
) -> None:
    ingest(session, str(store), workers=1, salt="s")
    n_images = session.scalar(select(func.count()).select_from(Image))
    victim = session.scalars(select(Image.uri).order_by(Image.id)).first()
    Path(victim).write_bytes(b"\x00" * 64)  # indexed, then corrupted in the store

    s1 = qs.score_images(session, device="cpu", batch_size=4, model=net, chunk_size=8)
    rows = _rows(session)
    assert s1.scored == n_images == len(rows)
    assert rows["image_id"].is_unique
    assert s1.errors == 1 and s1.skipped_existing == 0
    bad = rows[rows["defect_type"] == qs.UNREADABLE]
    assert len(bad) == 1 and bad[list(qm.METRIC_COLUMNS)].isna().all(axis=None)
    good = rows[rows["defect_type"] != qs.UNREADABLE]
    assert good["sharpness"].notna().all() and good["quality_score"].notna().all()

    s2 = qs.score_images(session, device="cpu", model=net)
    assert (s2.scored, s2.skipped_existing) == (0, n_images)
    assert len(_rows(session)) == n_images


class _KilledError(RuntimeError):
    pass


def test_resume_after_kill(session: Session, store: Path, net: Any) -> None:
    ingest(session, str(store), workers=1, salt="s")
    n_images = session.scalar(select(func.count()).select_from(Image))

    def kill_after_first_chunk(done: int, total: int, label: str) -> None:
        if done >= 5:
            raise _KilledError

    with pytest.raises(_KilledError):
        qs.score_images(
            session, device="cpu", model=net, chunk_size=5, progress=kill_after_first_chunk
        )
    session.rollback()
    assert len(_rows(session)) == 5
    s = qs.score_images(session, device="cpu", model=net, chunk_size=5)
    rows = _rows(session)
    assert s.scored == n_images - 5 and s.skipped_existing == 5
    assert len(rows) == n_images and rows["image_id"].is_unique


def test_dataset_scoring_with_ood_and_embeddings(tiny_demo: Path, tmp_path: Path, net: Any) -> None:
    engine = create_engine(copy_demo_db(tiny_demo, tmp_path))
    emb_dir = tmp_path / "emb"
    with Session(engine) as session:
        s = qs.score_images(session, dataset_id=DATASET, model=net, embeddings_dir=emb_dir)
        rows = _rows(session)
    engine.dispose()
    readable = rows[rows["defect_type"] != qs.UNREADABLE]
    assert s.scored == len(rows) > 0 and s.ood_features == "embedding+metrics"
    assert readable["ood_score"].notna().all()
    assert (readable["is_ood"] == (readable["ood_score"] > 1)).all()
    ref = readable["embedding_ref"].iloc[0]
    rel, _, row = ref.rpartition("#")
    with np.load(emb_dir / rel) as npz:
        k = int(row)
        assert npz["image_id"][k] == readable["image_id"].iloc[0]
        assert npz["embedding"].shape[1] == qmodel.EMBED_DIM


def test_bad_input(tiny_demo: Path, tmp_path: Path, net: Any, monkeypatch: Any) -> None:
    engine = create_engine(copy_demo_db(tiny_demo, tmp_path))
    with Session(engine) as session:
        with pytest.raises(qs.ScoreInputError, match="does not exist; valid: 1"):
            qs.score_images(session, dataset_id="nope", model=net)
        monkeypatch.setattr(qs, "SCHEDULER_TIMEOUT_S", 1.0)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with pytest.raises(qs.ScoreInputError, match="cannot reach the Dask scheduler"):
            qs.score_images(session, model=net, scheduler=f"tcp://127.0.0.1:{port}")
    engine.dispose()


def test_detect_defects_rules() -> None:
    base = {
        "sharpness": 1e4, "noise_sigma": 25.0, "p01": 150.0, "p99": 3000.0, "mean": 1000.0,
        "dynamic_range": 0.7, "clip_high": 0.0, "is_blank": False, "defect_type": "clean",
        "ood_score": 0.5, "is_ood": False, "modality": "DX",
    }  # fmt: skip
    rows = pd.DataFrame(
        [
            base,
            base | {"sharpness": 5.0},
            base | {"noise_sigma": 200.0},
            base | {"dynamic_range": 0.1},
            base | {"clip_high": 0.2, "mean": 2800.0},
            base | {"mean": 2500.0},
            base | {"is_blank": True},
            base | {"ood_score": 8.0, "is_ood": True},
            base | {"ood_score": 1.2, "is_ood": True},
            base | {"dynamic_range": 0.02, "modality": "CT"},
            base | {"defect_type": qs.UNREADABLE, "sharpness": None},
        ]
    )
    flags = qs.detect_defects(rows)
    expected = [
        None, "blur", "noise", "under_exposure", "over_exposure", "inverted_photometric",
        "blank", "non_medical", None, None, "unreadable",
    ]  # fmt: skip
    for i, want in enumerate(expected):
        fired = [c for c in flags.columns if flags.loc[i, c]]
        assert fired == ([want] if want else []), (i, fired)


@pytest.mark.slow
def test_dask_equals_local(tiny_demo: Path, tmp_path: Path, net: Any) -> None:
    distributed = pytest.importorskip("distributed")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    results = []
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
    ) as cluster:
        for sub, scheduler in (("a", None), ("b", cluster.scheduler_address)):
            engine = create_engine(copy_demo_db(tiny_demo, tmp_path / sub))
            with Session(engine) as session:
                s = qs.score_images(
                    session,
                    dataset_id=DATASET,
                    device="cpu",
                    model=net,
                    scheduler=scheduler,
                    chunk_size=8,
                )
                results.append((s, _rows(session)))
            engine.dispose()
    (s_local, local), (s_dask, dask) = results
    assert 0 < s_local.scored <= 32  # the tiny dataset: 31 images, one of them unreadable
    assert s_dask.scored == s_local.scored and s_dask.device.startswith("dask")
    assert list(dask["image_id"]) == list(local["image_id"])
    assert list(dask["defect_type"]) == list(local["defect_type"])
    num = [c for c in (*qm.METRIC_COLUMNS, "quality_score", "ood_score") if c != "is_blank"]
    np.testing.assert_allclose(
        dask[num].to_numpy(float), local[num].to_numpy(float), rtol=1e-5, atol=1e-6
    )
    assert list(dask["is_blank"]) == list(local["is_blank"])


def test_cli_score(tiny_demo: Path, tmp_path: Path, net: Any, monkeypatch: Any) -> None:
    from quality.cli import app

    monkeypatch.setattr(qs, "_model_for", lambda device: net)
    url = copy_demo_db(tiny_demo, tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["score", "--db", url, "--dataset", DATASET, "--json"])
    assert res.exit_code == 0, res.output
    assert '"scored"' in res.stdout
    assert (tmp_path / "embeddings").is_dir()
    bad = runner.invoke(app, ["score", "--db", url, "--dataset", "nope", "--json"])
    assert bad.exit_code == 2
