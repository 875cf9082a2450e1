"""The demo's seeded model truth shows up in the comparison and the release checklist.

``demo_truth.json`` → ``models``: ``v2`` (shadow) has a larger separation than ``v1``
(production) everywhere except at the regression source (``west_center``), where it is
worse. Against the doctors' consensus (every dataset image is labelled by 2-3 doctors; gold
labels cover only ~20% of the images, too few per source), the comparison must show the
improvement overall and the regression at that source, and the checklist must fail there and
only there among the sources.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from quality import models
from quality.db.queries import resolve_dataset
from quality.db.session import make_engine


@pytest.fixture(scope="module")
def demo(small_demo_dir: Path) -> Iterator[tuple[Session, dict]]:
    truth = json.loads((small_demo_dir / "demo_truth.json").read_text())
    engine = make_engine(f"sqlite:///{small_demo_dir / 'demo.db'}")
    with Session(engine) as session:
        yield session, truth
    engine.dispose()


@pytest.fixture(scope="module")
def comparison(demo: tuple[Session, dict]) -> models.ModelComparison:
    session, truth = demo
    dataset_id = resolve_dataset(session, truth["dataset"]["name"])
    versions = models.list_model_versions(session, dataset_id)
    pair = models.default_pair(versions)
    assert pair is not None
    return models.compare_versions(
        session, *pair, dataset_id=dataset_id, truth="consensus", n_boot=1000, seed=0
    )


def _truth_versions(truth: dict) -> dict[str, dict]:
    return {v["version"]: v for v in truth["models"]["versions"]}


def test_default_pair_is_production_vs_shadow(comparison: models.ModelComparison) -> None:
    assert (comparison.baseline.status, comparison.candidate.status) == ("production", "shadow")
    assert (comparison.baseline.version, comparison.candidate.version) == ("v1", "v2")


def test_improvement_overall(
    demo: tuple[Session, dict], comparison: models.ModelComparison
) -> None:
    _, truth = demo
    tv = _truth_versions(truth)
    assert tv["v2"]["auc"] > tv["v1"]["auc"]  # the seeded improvement
    m = comparison.metrics.set_index("role")
    assert m.at["candidate", "auc"] > m.at["baseline", "auc"]
    assert comparison.delta_auc.estimate > 0.02
    # Label noise of the consensus pulls both AUCs down, but not far from the truth's.
    for role, version in (("baseline", "v1"), ("candidate", "v2")):
        assert abs(m.at[role, "auc"] - tv[version]["auc"]) < 0.08


def test_regression_at_one_source(
    demo: tuple[Session, dict], comparison: models.ModelComparison
) -> None:
    _, truth = demo
    tv = _truth_versions(truth)
    regression = tv["v2"]["regression"]["source"]
    assert regression == "west_center"
    bs = comparison.by_source.set_index("source")
    assert set(bs.index) == set(tv["v2"]["auc_by_source"])
    for source in bs.index:
        seeded = tv["v2"]["auc_by_source"][source] - tv["v1"]["auc_by_source"][source]
        # Every source moves the way the truth says it does.
        assert (bs.at[source, "delta"] > 0) == (seeded > 0), source
    # The regression is certain: its whole CI lies below zero.
    assert bs.at[regression, "delta_high"] < 0
    assert bs["delta"].idxmin() == regression


def test_checklist_fails_at_the_regression_source_only(
    demo: tuple[Session, dict], comparison: models.ModelComparison
) -> None:
    _, truth = demo
    regression = _truth_versions(truth)["v2"]["regression"]["source"]
    items = {i.key: i for i in models.release_checklist(comparison)}
    assert items[f"source:{regression}"].status == "fail"
    failing_sources = {
        k for k, i in items.items() if k.startswith("source:") and i.status == "fail"
    }
    assert failing_sources == {f"source:{regression}"}
    assert items["overall_auc"].status == "pass"
    assert not models.checklist_passed(list(items.values()))
    # The demo's latency medians (85 and 140 ms) fit the default budgets.
    assert items["latency"].status == "pass"
