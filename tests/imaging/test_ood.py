"""OODDetector: synthetic clusters, calibration, validation, and natural photographs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quality.imaging import metrics as qm
from quality.imaging.ood import OODDetector, ledoit_wolf_shrinkage, ood_features


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
def test_shifted_cluster_is_flagged(method: str) -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(400, 8))
    det = OODDetector(method=method).fit(ref)
    assert det.predict(rng.normal(loc=4.0, size=(50, 8))).mean() > 0.95
    # Fresh in-distribution points: about 1 % flagged at the 99th percentile.
    assert det.predict(rng.normal(size=(2000, 8))).mean() < 0.04
    assert det.threshold_ > 0


def test_scores_increase_with_distance() -> None:
    det = OODDetector().fit(np.random.default_rng(1).normal(size=(300, 3)))
    s = det.score(np.array([[0.0, 0, 0], [2, 0, 0], [5, 0, 0]]))
    assert s[0] < s[1] < s[2]


def test_threshold_is_out_of_sample() -> None:
    # With D close to n, in-sample distances are much smaller than those of new points;
    # the cross-fitted threshold must not flag most new in-distribution points.
    rng = np.random.default_rng(2)
    det = OODDetector(percentile=95).fit(rng.normal(size=(120, 40)))
    assert det.predict(rng.normal(size=(1000, 40))).mean() < 0.15


def test_ledoit_wolf_matches_sklearn() -> None:
    sk = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 15)) @ rng.normal(size=(15, 15))
    x -= x.mean(axis=0)
    assert ledoit_wolf_shrinkage(x) == pytest.approx(
        sk.ledoit_wolf_shrinkage(x, assume_centered=True), rel=1e-10
    )


def test_nan_features_are_imputed() -> None:
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(100, 4))
    ref[::10, 2] = np.nan
    det = OODDetector().fit(ref)
    q = np.array([[0.0, 0.0, np.nan, 0.0]])
    assert np.isfinite(det.score(q)).all()


def test_constant_column_is_harmless() -> None:
    rng = np.random.default_rng(5)
    ref = np.column_stack([rng.normal(size=200), np.ones(200)])
    det = OODDetector().fit(ref)
    assert not det.predict([[0.0, 1.0]])[0]
    assert det.predict([[8.0, 1.0]])[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "lof"}, "method must be one of mahalanobis, knn"),
        ({"percentile": 0}, "percentile"),
        ({"k": 0}, "k must be"),
        ({"shrinkage": 2.0}, "shrinkage"),
        ({"n_splits": 1}, "n_splits"),
    ],
)
def test_bad_parameters(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OODDetector(**kwargs).fit(np.zeros((20, 2)))  # type: ignore[arg-type]


def test_too_few_rows_and_unfitted() -> None:
    with pytest.raises(ValueError, match="at least 6 rows"):
        OODDetector(method="knn", k=5).fit(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="not fitted"):
        OODDetector().score(np.zeros((1, 2)))
    det = OODDetector().fit(np.random.default_rng(0).normal(size=(30, 2)))
    with pytest.raises(ValueError, match="expected 2 features"):
        det.score(np.zeros((1, 3)))


def test_fit_is_deterministic() -> None:
    x = np.random.default_rng(6).normal(size=(80, 5))
    a = OODDetector(random_state=7).fit(x)
    b = OODDetector(random_state=7).fit(x)
    assert a.threshold_ == b.threshold_


def test_ood_features_shapes_and_logs() -> None:
    frame = pd.DataFrame({"sharpness": [0.0, 1e6], "snr": [-3.0, 2.0], "mean": [1.0, 2.0]})
    f = ood_features(np.zeros((2, 3)), frame)
    assert f.shape == (2, 6)
    assert f[1, 3] == pytest.approx(np.log1p(1e6))
    assert f[0, 4] == pytest.approx(-np.log1p(3.0))
    with pytest.raises(ValueError, match="rows"):
        ood_features(np.zeros((3, 2)), frame)
    with pytest.raises(ValueError, match="give an embedding"):
        ood_features(None, None)


# --------------------------------------------------------------------------- photographs


def _photographs() -> list[np.ndarray]:
    from skimage import color, data

    out = []
    for name in ("astronaut", "coffee", "chelsea", "camera", "rocket", "cat", "hubble_deep_field"):
        img = getattr(data, name)()
        if img.ndim == 3:
            img = color.rgb2gray(img[..., :3]) * 255.0
        out.append(np.asarray(img, dtype=np.float32))
    return out


def _metrics_frame(images: list[np.ndarray], bits: int) -> pd.DataFrame:
    # Same recipe as scoring: native resolution, one compute_all call per shape.
    rows = []
    for img in images:
        x = qm.to_batch([img], size=img.shape)
        res = qm.compute_all(x, bits_stored=bits)
        rows.append({k: float(v[0]) for k, v in res.items()})
    return pd.DataFrame(rows)


def _chest_phantoms(n: int) -> list[np.ndarray]:
    from quality.demo import phantoms

    out = []
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        anatomy = phantoms.chest_anatomy(rng)
        finding = phantoms.sample_finding(rng, anatomy, "nodule") if i % 2 else None
        out.append(phantoms.chest_radiograph(rng, anatomy, finding, 256, 256))
    return out


def test_natural_photographs_are_ood_against_chest_phantoms() -> None:
    """Photographs from ``skimage.data`` against a reference of demo chest phantoms.

    Features are the metrics plus the embedding of the shipped CNN when its weights are
    present; before that, the metrics alone (an honest, weaker feature set: the test passes
    on it too).
    """
    from quality.imaging import model as qmodel

    chests = _chest_phantoms(60)
    photos = _photographs()
    ref_metrics = _metrics_frame(chests, bits=12)
    photo_metrics = _metrics_frame(photos, bits=8)
    ref_emb = photo_emb = None
    if qmodel.WEIGHTS_PATH.is_file():
        net = qmodel.load_model(device="cpu")
        disp = [np.clip(c / 4095.0, 0, 1) for c in chests]
        ref_emb = qmodel.predict(net, disp)["embedding"]
        photo_emb = qmodel.predict(net, [p / 255.0 for p in photos])["embedding"]
    det = OODDetector().fit(ood_features(ref_emb, ref_metrics))
    flags = det.predict(ood_features(photo_emb, photo_metrics))
    assert flags.all(), f"not flagged: {np.flatnonzero(~flags).tolist()}"
