"""Drift statistics and p-values equal Evidently 0.7.23's, test by test, on the same data.

Evidently does not import with the project's pandas 3: it lives in its own virtualenv,
``bench/.peers-venv`` (``bash bench/peers_venv.sh``), and ``bench/evidently_peer.py`` runs
there on Parquet files written here. Without that venv the tests skip, or fail when
``QUALITY_REQUIRE_SERVICES=1``.

Which tests are compared, and how:

==================  ==========================  =========================================
test                our flavour                 compared
==================  ==========================  =========================================
ks                  default (= Evidently)       p-value
z                   default and ``evidently``   p-value (default: 2·sf vs 2·(1 - cdf))
chisquare           ``evidently`` (fit)         p-value; the default is a homogeneity
                                                test, a different test: not compared
wasserstein         default (= Evidently)       normalised distance
jensenshannon       ``evidently``; default on   distance (numeric: Evidently bins above
                    categories and on ≤ 10      20 values (Sturges) and counts per value
                    numeric values              below; the default bins at the reference
                                                deciles above 10 values)
psi                 as jensenshannon            PSI (Evidently's zero fill)
==================  ==========================  =========================================

Plus one ``Report([DataDriftPreset()])`` run, whose automatic choice (Wasserstein and
Jensen-Shannon above 1000 rows) must match :func:`quality.drift_tests.drift_table`'s.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import service_missing

from quality.drift_tests import drift_table, run_test

ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = ROOT / "bench" / ".peers-venv" / "bin" / "python"
PEER_SCRIPT = ROOT / "bench" / "evidently_peer.py"


def _peer(*args: str) -> dict:
    if not PEERS_PYTHON.exists():
        service_missing("the Evidently peers venv (create it: bash bench/peers_venv.sh)")
    res = subprocess.run(
        [str(PEERS_PYTHON), str(PEER_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(20240308)
    n_ref, n_cur = 20_000, 450  # ≥ 10⁴ reference rows: shares below 1e-4 exist

    def cats(n: int, p: list[float], labels: str = "abcd") -> np.ndarray:
        return rng.choice(list(labels[: len(p)]), size=n, p=p).astype(object)

    reference = pd.DataFrame(
        {
            "normal": rng.normal(0.0, 1.0, n_ref),
            "skewed": rng.lognormal(0.0, 0.8, n_ref),
            "counts": rng.poisson(6.0, n_ref).astype(float),  # 11-20 values: per value in Evidently
            "grade": rng.integers(0, 5, n_ref).astype(float),  # ≤ 10 values: per value in both
            "site": cats(n_ref, [0.4, 0.3, 0.2, 0.1]),
            "flag": cats(n_ref, [0.7, 0.3], "yn"),
            "gone": cats(n_ref, [0.5, 0.3, 0.2]),
            # One "r" in 20 000 (share 5e-5 ≤ 1e-4): Evidently fills the reference's empty
            # "s" bin with a millionth of it instead of 1e-4.
            "rare": np.r_[["r"], cats(n_ref - 1, [0.6, 0.4], "ab")].astype(object),
        }
    )
    current = pd.DataFrame(
        {
            "normal": rng.normal(0.25, 1.1, n_cur),
            "skewed": rng.lognormal(0.1, 0.8, n_cur),
            "counts": rng.poisson(6.6, n_cur).astype(float),
            "grade": rng.choice(5, n_cur, p=[0.3, 0.2, 0.2, 0.2, 0.1]).astype(float),
            "site": cats(n_cur, [0.3, 0.3, 0.25, 0.15]),
            "flag": cats(n_cur, [0.62, 0.38], "yn"),
            "gone": cats(n_cur, [0.6, 0.4]),  # category "c" disappears: PSI's zero fill
            "rare": cats(n_cur, [0.55, 0.4, 0.05], "abs"),
        }
    )
    # Missing values are dropped on both sides.
    reference.loc[::50, "normal"] = np.nan
    current.loc[::40, "site"] = None
    return reference, current


# (column, test, column type, our flavours that must equal Evidently)
CASES = [
    ("normal", "ks", "num", ("default", "evidently")),
    ("skewed", "ks", "num", ("default", "evidently")),
    ("counts", "ks", "num", ("default", "evidently")),
    ("flag", "z", "cat", ("default", "evidently")),
    ("site", "chisquare", "cat", ("evidently",)),
    ("gone", "chisquare", "cat", ("evidently",)),
    ("normal", "wasserstein", "num", ("default", "evidently")),
    ("skewed", "wasserstein", "num", ("default", "evidently")),
    ("normal", "jensenshannon", "num", ("evidently",)),
    ("counts", "jensenshannon", "num", ("evidently",)),
    ("grade", "jensenshannon", "num", ("default", "evidently")),
    ("site", "jensenshannon", "cat", ("default", "evidently")),
    ("gone", "jensenshannon", "cat", ("default", "evidently")),
    ("skewed", "psi", "num", ("evidently",)),
    ("counts", "psi", "num", ("evidently",)),
    ("grade", "psi", "num", ("default", "evidently")),
    ("site", "psi", "cat", ("default", "evidently")),
    ("gone", "psi", "cat", ("default", "evidently")),
    ("flag", "psi", "cat", ("default", "evidently")),
    ("rare", "psi", "cat", ("evidently",)),
    ("rare", "jensenshannon", "cat", ("default", "evidently")),
]


@pytest.fixture(scope="module")
def peer_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    folder = tmp_path_factory.mktemp("evidently")
    reference, current = _frames()
    reference.to_parquet(folder / "reference.parquet")
    current.to_parquet(folder / "current.parquet")
    spec = [{"column": c, "test": t, "type": k} for c, t, k, _ in CASES]
    (folder / "spec.json").write_text(json.dumps(spec))
    payload = _peer("stattests", str(folder), str(folder / "spec.json"))
    assert payload["evidently"] == "0.7.23"
    scores = {(r["column"], r["test"]): r for r in payload["results"]}
    return reference, current, scores


@pytest.mark.parametrize(
    ("column", "test", "kind", "flavors"), CASES, ids=[f"{c[1]}-{c[0]}" for c in CASES]
)
def test_equals_evidently(
    peer_results, column: str, test: str, kind: str, flavors: tuple[str, ...]
) -> None:  # type: ignore[no-untyped-def]
    reference, current, scores = peer_results
    theirs = scores[(column, test)]
    for flavor in flavors:
        ours = run_test(reference[column], current[column], test=test, flavor=flavor)  # type: ignore[arg-type]
        value = ours.p_value if ours.kind == "p_value" else ours.statistic
        assert value == pytest.approx(theirs["score"], rel=1e-9, abs=1e-14), (flavor, value, theirs)
        assert ours.drifted == theirs["drifted"], flavor


def test_the_cases_are_not_trivial(peer_results) -> None:  # type: ignore[no-untyped-def]
    _, _, scores = peer_results
    p_values = [scores[(c, t)]["score"] for c, t, _, _ in CASES if t in ("ks", "z", "chisquare")]
    assert min(p_values) < 1e-3 and max(p_values) > 1e-3  # drifted and undrifted columns
    assert any(r["drifted"] for r in scores.values()) and not all(
        r["drifted"] for r in scores.values()
    )


def test_defaults_that_differ_from_evidently(peer_results) -> None:  # type: ignore[no-untyped-def]
    """Homogeneity (ours) and goodness of fit (Evidently) differ, as do PSI zero fills and
    numeric bins: hence the flavour."""
    reference, current, scores = peer_results
    for column, test in [("site", "chisquare"), ("rare", "psi"), ("normal", "jensenshannon")]:
        ours = run_test(reference[column], current[column], test=test)
        value = ours.p_value if ours.kind == "p_value" else ours.statistic
        assert value != pytest.approx(scores[(column, test)]["score"], rel=1e-3), column


def test_report_preset_automatic_choice_matches(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n = 2000
    reference = pd.DataFrame(
        {
            "x": rng.normal(0, 1, n),
            "few": rng.integers(0, 4, n).astype(float),
            "c": rng.choice(["a", "b", "c"], n).astype(object),
        }
    )
    current = pd.DataFrame(
        {
            "x": rng.normal(0.2, 1, n),
            "few": rng.integers(0, 4, n).astype(float),
            "c": rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2]).astype(object),
        }
    )
    reference.to_parquet(tmp_path / "reference.parquet")
    current.to_parquet(tmp_path / "current.parquet")
    payload = _peer("report", str(tmp_path), "--runs", "1", "--warmup-rows", "200")
    theirs = {c["column"]: c for c in payload["columns"]}
    ours = drift_table(reference, current).set_index("column")
    names = {
        "Wasserstein distance (normed)": "wasserstein",
        "Jensen-Shannon distance": "jensenshannon",
    }
    assert {col: names[c["method"]] for col, c in theirs.items()} == dict(ours["test"])
    for col, c in theirs.items():
        assert ours.loc[col, "statistic"] == pytest.approx(c["score"], rel=1e-9, abs=1e-14), col
