"""The agreement summary on the tiny demo (SQLite)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from sqlalchemy.orm import Session

from quality.agreement.categorical import cohen_kappa, krippendorff_alpha
from quality.agreement.summary import (
    NO_FINDING,
    AgreementSummary,
    build_agreement_summary,
    prepare_task,
)
from quality.db import queries
from quality.db.session import make_engine, upgrade
from quality.demo import build_demo
from quality.errors import LabelDataError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("tiny_demo")
    engine = make_engine(f"sqlite:///{tmp / 'demo.db'}")
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as s:
        build_demo(s, tmp, seed=0, size="tiny", salt="test-salt", workers=1)
        s.commit()
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def summaries(tiny) -> dict[str, AgreementSummary]:
    with Session(tiny) as s:
        tasks = queries.list_tasks(s).set_index("name")
        return {
            name: build_agreement_summary(s, int(tasks.at[name, "id"]), min_shared=3)
            for name in ("finding", "finding-box")
        }


def test_pairwise_kappa_is_symmetric_with_unit_diagonal(summaries):
    for summary in summaries.values():
        k = summary.pairwise_kappa.to_numpy()
        assert k.shape[0] == k.shape[1] == 14
        np.testing.assert_array_equal(np.isnan(k), np.isnan(k.T))
        np.testing.assert_allclose(k[~np.isnan(k)], k.T[~np.isnan(k)])
        np.testing.assert_array_equal(np.diag(k), 1.0)  # the documented convention
        n = summary.pairwise_n.to_numpy()
        np.testing.assert_array_equal(n, n.T)
        off = ~np.eye(len(n), dtype=bool)
        assert np.isnan(k[off & (n < 3)]).all()


def test_pairwise_kappa_equals_cohen_on_shared_items(tiny, summaries):
    summary = summaries["finding"]
    with Session(tiny) as s:
        labels = prepare_task(s, summary.task.id).labels
    wide = labels.pivot(index="item_id", columns="annotator_id", values="label")
    n = summary.pairwise_n
    a, b = np.unravel_index(np.argmax(n.to_numpy() - np.eye(len(n)) * 1e9), n.shape)
    ca, cb = n.index[a], n.columns[b]
    both = wide[[ca, cb]].dropna()
    assert len(both) == n.at[ca, cb]
    expect = cohen_kappa(both[ca], both[cb])
    got = summary.pairwise_kappa.at[ca, cb]
    assert (np.isnan(expect) and np.isnan(got)) or got == pytest.approx(expect)


def test_alpha_interval_brackets_the_estimate(tiny, summaries):
    for summary in summaries.values():
        a = summary.alpha
        assert a["level"] == "nominal" and a["n_annotators"] == 14
        assert a["low"] <= a["estimate"] <= a["high"]
    summary = summaries["finding"]
    with Session(tiny) as s:
        prep = prepare_task(s, summary.task.id)
    rel = prep.labels.pivot(index="annotator_id", columns="item_id", values="label")
    assert summary.alpha["estimate"] == pytest.approx(krippendorff_alpha(rel.to_numpy()))


def test_worst_items_are_sorted(summaries):
    for summary in summaries.values():
        worst = summary.worst_items
        assert list(worst.columns) == [
            "item_id", "uri", "sop_uid", "consensus", "agreement", "n_labels", "labels", "boxes",
        ]  # fmt: skip
        assert worst["agreement"].is_monotonic_increasing
        assert (worst["n_labels"] >= 2).all() and worst["uri"].notna().all()
        assert all(
            set(lab) == set(box) for lab, box in zip(worst["labels"], worst["boxes"], strict=True)
        )


def test_box_task_codes_region_less_rows_as_no_finding(summaries):
    per_class = summaries["finding-box"].per_class
    assert per_class["cls"].tolist() == [NO_FINDING, "nodule", "opacity"]
    assert per_class["specific_agreement"].between(0, 1).all()
    boxes = summaries["finding-box"].worst_items["boxes"]
    assert any(b is not None for d in boxes for b in d.values())


def test_scalars_and_json(summaries):
    summary = summaries["finding"]
    assert 0 <= summary.percent_agreement <= 1
    assert summary.fleiss is None or -1 <= summary.fleiss <= 1
    assert summary.n_dropped == 1  # the demo's seeded label outside the schema
    payload = json.loads(json.dumps(summary.as_dict()))
    assert payload["alpha"]["estimate"] == pytest.approx(summary.alpha["estimate"])
    assert len(payload["pairwise_kappa"]["data"]) == 14


def test_unknown_task(tiny):
    with Session(tiny) as s, pytest.raises(LabelDataError, match="valid: 1 \\(finding\\)"):
        build_agreement_summary(s, 999)
