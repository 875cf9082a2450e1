"""DawidSkene, STAPLE and majority vote on simulated data with known truth, and against crowd-kit.

crowd-kit is the reference implementation of Dawid-Skene. It is a test-only dependency,
installed without its heavy extras (transformers): its import needs only attrs, scikit-learn,
tqdm and nltk (``[project.optional-dependencies] test``); the ``crowdkit`` fixture installs
``crowd-kit`` itself with ``pip install --no-deps`` when it is missing.
"""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from numpy.typing import NDArray

from quality.agreement import consensus
from quality.agreement.consensus import STAPLE, DawidSkene, majority_vote

CROWDKIT_SPEC = "crowd-kit==1.4.2"

# crowd-kit 1.4.2 still uses pandas' deprecated ``inplace=``/``copy=`` keywords.
pytestmark = pytest.mark.filterwarnings("ignore:::crowdkit")


@pytest.fixture(scope="session")
def crowdkit() -> ModuleType:
    """``crowdkit.aggregation``, installed on first use (no-deps: it pulls transformers).

    A lock file serialises the install across pytest-xdist workers.
    """
    try:
        return importlib.import_module("crowdkit.aggregation")
    except ImportError:
        pass
    with open(Path(sys.prefix) / ".crowdkit-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        importlib.invalidate_caches()
        if importlib.util.find_spec("crowdkit") is None:
            pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            subprocess.run([*pip, "attrs", "scikit-learn", "tqdm", "nltk"], check=True)
            subprocess.run([*pip, "--no-deps", CROWDKIT_SPEC], check=True)
            importlib.invalidate_caches()
    return importlib.import_module("crowdkit.aggregation")


def simulate(
    n_items: int,
    confusions: NDArray[np.float64],
    prior: NDArray[np.float64],
    per_item: int,
    seed: int,
) -> tuple[pd.DataFrame, NDArray[np.int64]]:
    """Long labels drawn from known confusion matrices ``confusions[j, true, observed]``."""
    rng = np.random.default_rng(seed)
    n_ann, k, _ = confusions.shape
    truth = rng.choice(k, size=n_items, p=prior)
    who = np.argsort(rng.random((n_items, n_ann)), axis=1)[:, :per_item]
    item = np.repeat(np.arange(n_items), per_item)
    ann = who.ravel()
    cum = np.cumsum(confusions[ann, truth[item]], axis=1)
    label = (rng.random(item.size)[:, None] > cum[:, :-1]).sum(axis=1)
    return pd.DataFrame({"item_id": item, "annotator_id": ann, "label": label}), truth


def confusion(acc: float, k: int) -> NDArray[np.float64]:
    m = np.full((k, k), (1 - acc) / (k - 1))
    np.fill_diagonal(m, acc)
    return m


@pytest.fixture(scope="module")
def team() -> NDArray[np.float64]:
    """Three good annotators, three mediocre, two who mostly answer class 0 (biased)."""
    k = 3
    biased = np.array([[0.9, 0.05, 0.05], [0.7, 0.25, 0.05], [0.7, 0.05, 0.25]])
    return np.stack(
        [confusion(0.9, k), confusion(0.85, k), confusion(0.8, k)]
        + [confusion(0.55, k)] * 3
        + [biased, biased]
    )


PRIOR = np.array([0.5, 0.3, 0.2])


def test_dawid_skene_beats_majority_vote(team: NDArray[np.float64]) -> None:
    df, truth = simulate(1500, team, PRIOR, per_item=5, seed=1)
    ds = DawidSkene().fit(df)
    mv = majority_vote(df)
    acc_ds = float((ds.labels_.to_numpy() == truth).mean())
    acc_mv = float((mv["label"].to_numpy() == truth).mean())
    assert acc_ds > acc_mv + 0.03
    assert acc_ds > 0.9


def test_agrees_with_crowdkit(team: NDArray[np.float64], crowdkit: ModuleType) -> None:
    df, _ = simulate(1000, team, PRIOR, per_item=4, seed=2)
    ours = DawidSkene(n_iter=100, tol=1e-5).fit(df)
    peer = crowdkit.DawidSkene(n_iter=100, tol=1e-5)
    peer_labels = peer.fit_predict(df.rename(columns={"item_id": "task", "annotator_id": "worker"}))
    peer_labels = peer_labels.reindex(ours.labels_.index)
    assert (peer_labels.to_numpy() == ours.labels_.to_numpy()).mean() >= 0.99
    # Same stopping rule, same work: same iteration count and near-identical posteriors.
    assert ours.n_iter_ == len(peer.loss_history_)
    assert ours.loglik_ == pytest.approx(peer.loss_history_[-1], abs=1e-6)
    peer_probas = peer.probas_.reindex(index=ours.probas_.index, columns=ours.probas_.columns)
    np.testing.assert_allclose(ours.probas_.to_numpy(), peer_probas.to_numpy(), atol=1e-6)
    # errors_ has crowd-kit's layout: (annotator, observed label) × true label.
    peer_errors = peer.errors_.reindex(ours.errors_.index).dropna()
    np.testing.assert_allclose(
        ours.errors_.loc[peer_errors.index, peer_errors.columns].to_numpy(),
        peer_errors.to_numpy(),
        atol=1e-6,
    )


def test_agrees_with_crowdkit_on_string_ids_and_gold(
    team: NDArray[np.float64], crowdkit: ModuleType
) -> None:
    df, truth = simulate(600, team, PRIOR, per_item=3, seed=3)
    names = np.array(["normal", "benign", "malignant"], dtype=object)
    df = df.assign(
        item_id="case" + df["item_id"].astype(str),
        annotator_id="dr" + df["annotator_id"].astype(str),
        label=names[df["label"].to_numpy()],
    )
    items = "case" + pd.Series(np.arange(600)).astype(str)
    gold = pd.Series(names[truth[:100]], index=items[:100].to_numpy())
    ours = DawidSkene().fit(df, gold=gold)
    peer = crowdkit.DawidSkene(n_iter=100, tol=1e-5)
    peer_labels = peer.fit_predict(
        df.rename(columns={"item_id": "task", "annotator_id": "worker"}), gold
    ).reindex(ours.labels_.index)
    assert (peer_labels.to_numpy() == ours.labels_.to_numpy()).mean() >= 0.99


def test_gold_clamps_posteriors(team: NDArray[np.float64]) -> None:
    df, truth = simulate(800, team, PRIOR, per_item=3, seed=4)
    # Gold that contradicts the crowd on purpose: the posterior still follows gold.
    gold_items = np.arange(50)
    gold_labels = (truth[gold_items] + 1) % 3
    gold = pd.DataFrame({"item_id": gold_items, "label": gold_labels})
    ds = DawidSkene().fit(df, gold=gold)
    expected = np.eye(3)[gold_labels]
    np.testing.assert_array_equal(ds.probas_.loc[gold_items].to_numpy(), expected)
    np.testing.assert_array_equal(ds.labels_.loc[gold_items].to_numpy(), gold_labels)
    # True gold helps: better estimates of the confusions than without it.
    true_gold = pd.Series(truth[:400], index=np.arange(400))
    err_with = np.abs(DawidSkene().fit(df, gold=true_gold).confusions_ - team).mean()
    err_without = np.abs(DawidSkene().fit(df).confusions_ - team).mean()
    assert err_with < err_without


def test_errors_recover_true_confusions(team: NDArray[np.float64]) -> None:
    df, _ = simulate(6000, team, PRIOR, per_item=6, seed=5)
    ds = DawidSkene().fit(df)
    assert np.abs(ds.confusions_ - team).max() < 0.05
    np.testing.assert_allclose(ds.priors_.to_numpy(), PRIOR, atol=0.02)
    # The two layouts hold the same numbers; every confusion row sums to 1.
    j, c, obs = 6, 1, 0
    assert ds.errors_.loc[(j, obs), c] == ds.confusions_[j, c, obs]
    np.testing.assert_allclose(ds.confusions_.sum(axis=2), 1.0)
    np.testing.assert_allclose(ds.errors_.groupby(level="annotator_id").sum().to_numpy(), 1.0)
    np.testing.assert_allclose(ds.probas_.sum(axis=1).to_numpy(), 1.0)
    assert ds.priors_.sum() == pytest.approx(1.0)
    assert len(ds.loglik_history_) == ds.n_iter_
    assert ds.loglik_ == ds.loglik_history_[-1]


def test_block_size_does_not_change_the_fit(
    team: NDArray[np.float64], monkeypatch: pytest.MonkeyPatch
) -> None:
    df, truth = simulate(1000, team, PRIOR, per_item=3, seed=8)
    gold = pd.Series(truth[::7], index=np.arange(1000)[::7])  # gold in every block
    whole = DawidSkene().fit(df, gold=gold)
    monkeypatch.setattr(consensus, "_BLOCK", 64)
    blocked = DawidSkene().fit(df, gold=gold)
    assert blocked.n_iter_ == whole.n_iter_
    np.testing.assert_allclose(blocked.probas_, whole.probas_, atol=1e-12)
    np.testing.assert_allclose(blocked.confusions_, whole.confusions_, atol=1e-12)
    np.testing.assert_array_equal(blocked.probas_.loc[gold.index].to_numpy().argmax(1), gold)


def test_fit_predict_and_refit(team: NDArray[np.float64]) -> None:
    df, _ = simulate(300, team, PRIOR, per_item=3, seed=6)
    ds = DawidSkene()
    labels = ds.fit_predict(df)
    pd.testing.assert_series_equal(labels, ds.labels_)
    assert labels.index.name == "item_id"
    assert list(ds.classes_) == [0, 1, 2]
    # Row order of the input does not matter.
    shuffled = df.sample(frac=1.0, random_state=np.random.default_rng(0).integers(1 << 31))
    pd.testing.assert_series_equal(DawidSkene().fit_predict(shuffled), labels)


def test_classes_fix_order_and_allow_unused_class(team: NDArray[np.float64]) -> None:
    df, _ = simulate(200, team, PRIOR, per_item=3, seed=7)
    ds = DawidSkene().fit(df, classes=[2, 1, 0, 3])
    assert list(ds.probas_.columns) == [2, 1, 0, 3]
    # No one chose class 3: its prior decays towards 0 (its confusion rows stay uniform).
    assert ds.priors_.loc[3] < 0.01
    assert ds.confusions_.shape == (8, 4, 4)


# --- majority vote ---------------------------------------------------------------------------


def test_majority_vote_counts_and_support() -> None:
    df = pd.DataFrame(
        {
            "item_id": [1, 1, 1, 2, 2, 2, 3, 3],
            "annotator_id": ["a", "b", "c", "a", "b", "c", "a", "b"],
            "label": ["x", "x", "y", "y", "y", "y", "x", None],
        }
    )
    mv = majority_vote(df)
    assert mv["item_id"].tolist() == [1, 2, 3]
    assert mv["label"].tolist() == ["x", "y", "x"]
    np.testing.assert_allclose(mv["support"], [2 / 3, 1.0, 1.0])
    assert mv["n_labels"].tolist() == [3, 3, 1]


def test_majority_vote_ties() -> None:
    df = pd.DataFrame(
        {
            "item_id": np.repeat(np.arange(200), 2),
            "annotator_id": np.tile(["a", "b"], 200),
            "label": np.tile(["y", "x"], 200),
        }
    )
    first = majority_vote(df)
    assert (first["label"] == "x").all()  # first class in sorted order
    np.testing.assert_allclose(first["support"], 0.5)
    r1 = majority_vote(df, tie_break="random", random_state=0)
    r2 = majority_vote(df, tie_break="random", random_state=0)
    pd.testing.assert_frame_equal(r1, r2)
    share = (r1["label"] == "x").mean()
    assert 0.35 < share < 0.65
    # A clear winner is never re-drawn.
    clear = pd.concat(
        [df, pd.DataFrame({"item_id": np.arange(200), "annotator_id": "c", "label": "y"})]
    )
    assert (majority_vote(clear, tie_break="random", random_state=1)["label"] == "y").all()


# --- STAPLE ----------------------------------------------------------------------------------


def _disk(shape: tuple[int, ...], radius: float) -> NDArray[np.bool_]:
    grid = np.indices(shape)
    centre = np.array(shape)[(slice(None),) + (None,) * len(shape)] / 2
    return ((grid - centre) ** 2).sum(axis=0) < radius**2


def _raters(
    truth: NDArray[np.bool_], p: NDArray[np.float64], q: NDArray[np.float64], seed: int
) -> NDArray[np.bool_]:
    rng = np.random.default_rng(seed)
    u = rng.random((len(p), *truth.shape))
    sens = p.reshape(-1, *([1] * truth.ndim))
    spec = q.reshape(-1, *([1] * truth.ndim))
    return np.where(truth, u < sens, u >= spec)


def test_staple_recovers_rater_performance() -> None:
    truth = _disk((160, 160), 45)
    p = np.array([0.95, 0.9, 0.8, 0.7, 0.92])
    q = np.array([0.98, 0.95, 0.9, 0.97, 0.85])
    masks = _raters(truth, p, q, seed=0)
    st = STAPLE().fit(masks)
    np.testing.assert_allclose(st.sensitivity_, p, atol=0.03)
    np.testing.assert_allclose(st.specificity_, q, atol=0.03)
    assert st.estimate_.shape == truth.shape
    assert ((st.estimate_ > 0.5) == truth).mean() > 0.98
    assert st.prior_ == pytest.approx(masks.mean())
    assert st.n_iter_ >= 1 and st.n_iter_ < 100  # converged before the cap


def test_staple_3d_and_list_input() -> None:
    truth = _disk((24, 40, 40), 12)
    p = np.array([0.9, 0.85, 0.8])
    q = np.array([0.97, 0.95, 0.99])
    masks = _raters(truth, p, q, seed=1)
    a = STAPLE().fit(masks)
    b = STAPLE().fit([m.astype(np.uint8) for m in masks])
    np.testing.assert_allclose(a.estimate_, b.estimate_)
    np.testing.assert_allclose(a.sensitivity_, p, atol=0.03)
    np.testing.assert_allclose(a.specificity_, q, atol=0.03)


def test_staple_many_raters_uses_unique_patterns() -> None:
    truth = _disk((60, 60), 18)
    p = np.linspace(0.75, 0.95, 22)
    q = np.linspace(0.97, 0.9, 22)
    st = STAPLE().fit(_raters(truth, p, q, seed=2))  # > 20 raters: the np.unique path
    np.testing.assert_allclose(st.sensitivity_, p, atol=0.06)
    assert ((st.estimate_ > 0.5) == truth).mean() > 0.99
