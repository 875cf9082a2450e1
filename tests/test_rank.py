"""Active-learning ranking (:func:`quality.models.build_worklist`) and ``quality rank``.

The DB tests use the example of ``test_models`` (:func:`test_models.add_model_rows`), on
SQLite and PostgreSQL. Its dataset holds i0..i7 and i9; the doctors annotated i0..i5 and the
gold labels cover i0..i7, so

* the ``unannotated`` pool is {i6, i7, i9} and the ``no_gold`` pool is {i9};
* v1 scores them 0.70, 0.65 and 0.50 (i9 most uncertain), v2 0.20, 0.80 and nothing;
* v3 scores 0.90, 0.70 and 0.45: the versions disagree most on i6, least on i9.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist
from sqlalchemy.orm import Session
from test_models import add_model_rows
from typer.testing import CliRunner

from quality import models
from quality.cli import app
from quality.db.schema import ImageQuality
from quality.db.session import make_engine, upgrade
from quality.errors import LabelDataError, ModelInputError

runner = CliRunner()


@pytest.fixture
def example(session: Session) -> dict[str, int]:
    return add_model_rows(session)


def _keys(ids: dict[str, int], image_ids: pd.Series) -> list[str]:
    names = {v: k for k, v in ids.items() if k.startswith("i")}
    return [names[int(i)] for i in image_ids]


# --------------------------------------------------------------------------- pure scores


def test_entropy_and_margin_by_hand() -> None:
    h = models.entropy_scores([0.5, 0.25, 0.0])
    expected = -(0.25 * np.log2(0.25) + 0.75 * np.log2(0.75))
    np.testing.assert_allclose(h, [1.0, expected, 0.0])
    # Three classes: uniform is 1, one-hot 0; normalised by log 3.
    h3 = models.entropy_scores([[1 / 3, 1 / 3, 1 / 3], [1, 0, 0], [0.5, 0.5, 0]])
    np.testing.assert_allclose(h3, [1.0, 0.0, np.log(2) / np.log(3)])
    np.testing.assert_allclose(
        models.margin_scores([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2]]), [0.2, 0.0], atol=1e-12
    )
    # Binary: entropy and margin give the same order (most uncertain first).
    p = np.array([0.9, 0.45, 0.7, 0.02, 0.6])
    assert list(np.argsort(-models.entropy_scores(p))) == list(np.argsort(models.margin_scores(p)))
    with pytest.raises(LabelDataError, match=r"\[0, 1\]"):
        models.entropy_scores([1.5])
    with pytest.raises(LabelDataError, match="NaN"):
        models.margin_scores([0.5, float("nan")])


def test_committee_scores() -> None:
    members = np.array([[0.7, 0.65, 0.5], [0.2, 0.8, np.nan], [0.9, 0.7, 0.45]])
    kl = models.committee_scores(members)
    # By hand: mean KL of each member from the mean of the members that scored the item.
    for j in range(3):
        ps = members[~np.isnan(members[:, j]), j]
        dist = np.stack([1 - ps, ps], axis=1)
        mean = dist.mean(axis=0)
        assert kl[j] == pytest.approx(np.mean((dist * np.log(dist / mean)).sum(axis=1)))
    assert list(np.argsort(-kl)) == [0, 1, 2]
    # Identical members: no disagreement; one member: undefined.
    assert models.committee_scores([[0.3, 0.6], [0.3, np.nan]])[0] == pytest.approx(0.0)
    assert np.isnan(models.committee_scores([[0.3, 0.6], [0.3, np.nan]])[1])
    # Vote entropy: a 1-1 split of two members is maximal, agreement is zero.
    np.testing.assert_allclose(
        models.committee_scores([[0.9, 0.9], [0.1, 0.8]], method="vote"), [1.0, 0.0]
    )
    with pytest.raises(LabelDataError, match="valid: kl, vote"):
        models.committee_scores([[0.5]], method="std")  # type: ignore[arg-type]


def _naive_k_center(x: np.ndarray, budget: int, centers: np.ndarray) -> list[int]:
    """The textbook version with a full distance matrix (the reference)."""
    d = cdist(x, np.vstack([centers, x]))  # n × (m + n)
    chosen: list[int] = []
    cols = list(range(len(centers)))
    for _ in range(budget):
        nearest = d[:, cols].min(axis=1)
        nearest[chosen] = -1
        i = int(np.argmax(nearest))
        chosen.append(i)
        cols.append(len(centers) + i)
    return chosen


def test_k_center_equals_the_textbook_version() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    centers = rng.normal(size=(5, 8))
    picks, dists = models.k_center_greedy(x, 25, centers=centers)
    assert picks.tolist() == _naive_k_center(x, 25, centers)
    assert np.all(np.diff(dists) <= 1e-5)  # the covering radius never grows


def test_k_center_spreads_over_clusters() -> None:
    rng = np.random.default_rng(1)
    blobs = [rng.normal(loc, 0.1, size=(20, 2)) for loc in ((0, 0), (10, 0), (0, 10), (10, 10))]
    x = np.vstack(blobs)
    picks, dists = models.k_center_greedy(x, 4, seed=3)
    assert sorted(int(p) // 20 for p in picks) == [0, 1, 2, 3]  # one pick per cluster
    assert np.isnan(dists[0]) and (dists[1:] > 5).all()
    # Labelled centres on three clusters: the first pick is in the fourth.
    first, _ = models.k_center_greedy(x, 1, centers=[[0, 0], [10, 0], [0, 10]])
    assert int(first[0]) // 20 == 3
    # Duplicates are never picked twice; the budget is capped at n.
    dup, _ = models.k_center_greedy(np.zeros((3, 2)), 5, seed=0)
    assert sorted(dup.tolist()) == [0, 1, 2]
    with pytest.raises(LabelDataError, match="centers"):
        models.k_center_greedy(x, 2, centers=np.zeros((1, 3)))


# --------------------------------------------------------------------------- the worklist


def test_unlabeled_pools(session: Session, example: dict[str, int]) -> None:
    sizes = models.pool_sizes(session, example["dataset"], example["task"])
    assert sizes == {"unannotated": 3, "no_gold": 1}
    w = models.build_worklist(session, example["dataset"], example["v1"], strategy="random")
    assert set(_keys(example, w.items["image_id"])) == {"i6", "i7", "i9"}
    assert w.n_pool == 3 and w.n_ranked == 3
    g = models.build_worklist(
        session, example["dataset"], example["v1"], strategy="random", pool="no_gold"
    )
    assert _keys(example, g.items["image_id"]) == ["i9"]


def test_entropy_and_margin_order(session: Session, example: dict[str, int]) -> None:
    for strategy in ("entropy", "margin"):
        w = models.build_worklist(session, example["dataset"], example["v1"], strategy=strategy)
        assert _keys(example, w.items["image_id"]) == ["i9", "i7", "i6"], strategy
        assert w.items["rank"].tolist() == [1, 2, 3]
        assert w.items["priority"].is_monotonic_decreasing
    w = models.build_worklist(session, example["dataset"], example["v1"], budget=2)
    assert _keys(example, w.items["image_id"]) == ["i9", "i7"]
    row = w.items.iloc[0]
    assert row["score"] == 0.5 and row["entropy"] == pytest.approx(1.0) and row["margin"] == 0.0
    assert row["source"] == "B" and row["split"] == "train"


def test_unscored_images_are_left_out(session: Session, example: dict[str, int]) -> None:
    # v2 has no score on i9 (an empty output); 0.2 and 0.8 tie, broken by the seed.
    w = models.build_worklist(session, example["dataset"], example["v2"])
    assert w.n_pool == 3 and w.n_ranked == 2
    assert set(_keys(example, w.items["image_id"])) == {"i6", "i7"}
    orders = {
        tuple(models.rank_unlabeled(session, example["dataset"], example["v2"], seed=s)["image_id"])
        for s in range(12)
    }
    assert len(orders) == 2  # both tie orders occur across seeds ...
    again = models.rank_unlabeled(session, example["dataset"], example["v2"], seed=5)
    assert tuple(again["image_id"]) == tuple(
        models.rank_unlabeled(session, example["dataset"], example["v2"], seed=5)["image_id"]
    )  # ... and one seed always gives the same


def test_committee_order(session: Session, example: dict[str, int]) -> None:
    w = models.build_worklist(session, example["dataset"], example["v1"], strategy="committee")
    assert _keys(example, w.items["image_id"]) == ["i6", "i7", "i9"]
    members = np.array([[0.7, 0.65, 0.5], [0.2, 0.8, np.nan], [0.9, 0.7, 0.45]])
    np.testing.assert_allclose(w.items["priority"], models.committee_scores(members))


def test_committee_needs_two_versions(session: Session, tmp_path: Path) -> None:
    ids = add_model_rows(session)
    from sqlalchemy import delete

    from quality.db.schema import ModelVersion

    session.execute(delete(ModelVersion).where(ModelVersion.id.in_([ids["v2"], ids["v3"]])))
    session.commit()
    with pytest.raises(ModelInputError, match="at least two versions"):
        models.build_worklist(session, ids["dataset"], ids["v1"], strategy="committee")


def _write_embeddings(session: Session, ids: dict[str, int], folder: Path) -> None:
    vectors = {
        "i0": (0.0, 0.0), "i1": (0.1, 0.0), "i2": (0.0, 0.1), "i3": (0.1, 0.1),
        "i4": (0.05, 0.0), "i5": (0.0, 0.05), "i6": (10.0, 0.0), "i7": (0.2, 0.2),
        "i9": (5.0, 5.0),
    }  # fmt: skip
    (folder / "iqa-test").mkdir(parents=True)
    keys = list(vectors)
    np.savez(
        folder / "iqa-test" / "e.npz",
        image_id=np.array([ids[k] for k in keys]),
        embedding=np.array([vectors[k] for k in keys], dtype=np.float32),
    )
    for row, key in enumerate(keys):
        session.add(
            ImageQuality(image_id=ids[key], scorer_version="iqa-test",
                         embedding_ref=f"iqa-test/e.npz#{row}")
        )  # fmt: skip
    session.commit()


def test_diversity_on_embeddings(session: Session, example: dict[str, int], tmp_path: Path) -> None:
    with pytest.raises(ModelInputError, match="run `quality score` first"):
        models.build_worklist(
            session, example["dataset"], example["v1"], strategy="diversity",
            embeddings_dir=tmp_path,
        )  # fmt: skip
    _write_embeddings(session, example, tmp_path)
    with pytest.raises(ModelInputError, match="run `quality score` first"):
        models.build_worklist(session, example["dataset"], example["v1"], strategy="diversity")
    w = models.build_worklist(
        session, example["dataset"], example["v1"], strategy="diversity", embeddings_dir=tmp_path
    )
    # Seeded with the labelled i0..i5 near the origin: the far point, then the middle one;
    # each at its distance from the nearest labelled image, (0.1, 0) and (0.1, 0.1).
    assert _keys(example, w.items["image_id"]) == ["i6", "i9", "i7"]
    np.testing.assert_allclose(w.items["priority"].iloc[:2], [9.9, np.hypot(4.9, 4.9)], rtol=1e-5)


def test_class_mix_and_csv(session: Session, example: dict[str, int]) -> None:
    w = models.build_worklist(session, example["dataset"], example["v1"])
    mix = w.class_mix.set_index(["kind", "class"])["n"]
    assert mix[("expected", "finding")] == pytest.approx(0.70 + 0.65 + 0.50)
    assert mix[("expected", "normal")] == pytest.approx(0.30 + 0.35 + 0.50)
    assert mix[("predicted", "opacity")] == 2 and mix[("predicted", "normal")] == 1
    back = pd.read_csv(io.StringIO(w.to_csv()))
    assert list(back.columns) == models.WORKLIST_COLUMNS
    assert back["image_id"].tolist() == w.items["image_id"].tolist()
    np.testing.assert_allclose(back["priority"], w.items["priority"])
    doc = json.loads(json.dumps(w.as_dict()))
    assert doc["n_items"] == 3 and doc["items"][0]["rank"] == 1


def test_bad_settings_name_the_field(session: Session, example: dict[str, int]) -> None:
    ds, v1 = example["dataset"], example["v1"]
    with pytest.raises(ModelInputError, match="valid: entropy, margin"):
        models.build_worklist(session, ds, v1, strategy="bald")  # type: ignore[arg-type]
    with pytest.raises(ModelInputError, match="budget"):
        models.build_worklist(session, ds, v1, budget=0)
    with pytest.raises(ModelInputError, match="valid: unannotated, no_gold"):
        models.build_worklist(session, ds, v1, pool="all")  # type: ignore[arg-type]
    with pytest.raises(ModelInputError, match="does not exist"):
        models.build_worklist(session, ds, 12345)


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'rank.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as s:
        add_model_rows(s)
    engine.dispose()
    return url


def test_cli_rank_json_and_csv(cli_db: str, tmp_path: Path) -> None:
    out = tmp_path / "worklist.csv"
    res = runner.invoke(
        app,
        ["rank", "chest-models", "--model-version", "m:v1", "--budget", "2", "--out", str(out),
         "--db", cli_db, "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["strategy"] == "entropy" and doc["n_pool"] == 3 and doc["n_items"] == 2
    assert doc["out"] == str(out)
    csv = pd.read_csv(out)
    assert csv["rank"].tolist() == [1, 2]
    assert csv["image_id"].tolist() == [i["image_id"] for i in doc["items"]]
    human = runner.invoke(app, ["rank", "chest-models", "--model-version", "v1", "--db", cli_db])
    assert human.exit_code == 0 and "expected class mix" in human.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-version", "v9"], "known: m:v1"),
        (["--model-version", "v1", "--strategy", "bald"], "--strategy"),
        (["--model-version", "v1", "--pool", "all"], "--pool"),
        (["--model-version", "v1", "--strategy", "diversity"], "run `quality score` first"),
        (["--model-version", "v1", "--task", "nope"], "does not exist"),
    ],
)
def test_cli_rank_bad_input_exits_2(cli_db: str, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["rank", "chest-models", *args, "--db", cli_db])
    assert res.exit_code == 2
    assert message in res.stderr.replace("\n", " ")


def test_cli_rank_unknown_dataset(cli_db: str) -> None:
    res = runner.invoke(app, ["rank", "nope", "--model-version", "v1", "--db", cli_db])
    assert res.exit_code == 2 and "chest-models" in res.stderr
