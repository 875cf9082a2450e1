"""Batched torch metrics (quality/imaging/metrics.py) against the numpy/skimage references
in ``reference_metrics.py``, their reaction to controlled degradations, and edge cases."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.measure import shannon_entropy
from skimage.restoration import estimate_sigma

from quality.demo import phantoms
from quality.imaging import metrics

from . import reference_metrics as reference

H, W = 96, 128  # not square, so a swapped axis shows


def _chest(seed: int, noise: float = 14.0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return phantoms.chest_radiograph(rng, phantoms.chest_anatomy(rng), None, H, W, noise=noise)


def _disc(seed: int, sigma: float = 20.0) -> NDArray[np.float64]:
    """A bright smooth disc on a dark ground plus Gaussian noise of known ``sigma``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot(yy - H / 2, xx - W / 2)
    clean = 100 + 900 * ndimage.gaussian_filter((r < 30).astype(float), 2)
    return clean + rng.normal(0, sigma, (H, W))


PHANTOMS: dict[str, NDArray[np.floating]] = {
    "chest": _chest(0),
    "ct_hu": phantoms.ct_slice(np.random.default_rng(1), 0.5, H, W),
    "canister": phantoms.canister_radiograph(np.random.default_rng(2), H, W),
    "natural": phantoms.natural_texture(np.random.default_rng(3), H, W),
    "disc": _disc(4),
}


def _t(*imgs: NDArray[np.floating], dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(i, np.float64) for i in imgs]))[:, None].to(dtype)


def _bin(img: NDArray[np.floating], nbins: int) -> float:
    return float(np.ptp(img)) / nbins


# Relative tolerance of each column against the reference (float64 inputs). Percentile
# columns are checked in absolute terms, to one fine histogram bin, below.
RTOL = {
    "sharpness": 1e-9,
    "tenengrad": 1e-9,
    "noise_sigma": 1e-9,
    "snr": 1e-7,
    "cnr": 1e-7,
    "cjv": 1e-7,
    "efc": 1e-9,
    "fber": 1e-7,
    "entropy": 1e-9,
    "clip_low": 0.0,
    "clip_high": 0.0,
    "mean": 1e-12,
    "border_share": 0.0,
}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # The test images are small: with 2 OpenMP threads on a shared 2-core machine every
    # parallel region can wait tens of ms for a descheduled thread. One thread is faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- torch == reference


@pytest.fixture(scope="module")
def all_ours() -> dict[str, dict[str, torch.Tensor]]:
    return {k: metrics.compute_all(_t(img), bits_stored=12) for k, img in PHANTOMS.items()}


@pytest.mark.parametrize("name", list(PHANTOMS))
def test_compute_all_matches_reference(
    name: str, all_ours: dict[str, dict[str, torch.Tensor]]
) -> None:
    img = PHANTOMS[name]
    ours = {k: v.item() for k, v in all_ours[name].items()}
    ref = reference.compute_all(img, 12)
    for col, rtol in RTOL.items():
        assert ours[col] == pytest.approx(ref[col], rel=rtol, abs=1e-12, nan_ok=True), col
    fine = _bin(img, metrics.HIST_BINS)
    for col in ("p01", "p99"):
        assert abs(ours[col] - ref[col]) <= fine * 1.001, col
    assert abs(ours["dynamic_range"] - ref["dynamic_range"]) <= 2 * fine / (2**12 - 1) * 1.001
    assert ours["is_blank"] == ref["is_blank"] is False


@pytest.mark.parametrize("name", list(PHANTOMS))
def test_laplacian_and_tenengrad_match_scipy(name: str) -> None:
    img = np.asarray(PHANTOMS[name], np.float64)
    x = _t(img)
    lap = np.var(ndimage.laplace(img))
    ten = np.mean(ndimage.sobel(img, axis=0) ** 2 + ndimage.sobel(img, axis=1) ** 2)
    assert metrics.laplacian_variance(x).item() == pytest.approx(lap, rel=1e-10)
    assert metrics.tenengrad(x).item() == pytest.approx(ten, rel=1e-10)


@pytest.mark.parametrize("name", list(PHANTOMS))
def test_otsu_matches_skimage_within_a_bin(name: str) -> None:
    img = np.asarray(PHANTOMS[name], np.float64)
    ours = metrics.otsu_threshold(_t(img)).item()
    assert abs(ours - threshold_otsu(img)) <= _bin(img, 256) * 1.001


@pytest.mark.parametrize("name", list(PHANTOMS))
def test_entropy_matches_shannon_entropy_of_quantised_image(name: str) -> None:
    img = np.asarray(PHANTOMS[name], np.float64)
    q = np.minimum(np.floor((img - img.min()) / np.ptp(img) * 256), 255).astype(np.uint8)
    assert metrics.entropy(_t(img)).item() == pytest.approx(shannon_entropy(q, base=2), rel=1e-9)


@pytest.mark.parametrize("name", list(PHANTOMS))
def test_class_metrics_match_reference_on_the_same_mask(name: str) -> None:
    img = np.asarray(PHANTOMS[name], np.float64)
    mask = img > threshold_otsu(img)
    x, m = _t(img), torch.from_numpy(mask)[None, None]
    ref = reference.class_metrics(img, mask)
    for fn in (metrics.snr, metrics.cnr, metrics.cjv, metrics.fber):
        assert fn(x, m).item() == pytest.approx(ref[fn.__name__], rel=1e-9), fn.__name__


@pytest.mark.parametrize("name", list(PHANTOMS))
def test_percentiles_within_one_fine_bin(name: str) -> None:
    img = np.asarray(PHANTOMS[name], np.float64)
    mean, p01, p99 = metrics.intensity_stats(_t(img))
    fine = _bin(img, metrics.HIST_BINS) * 1.001
    assert mean.item() == pytest.approx(img.mean(), rel=1e-12)
    assert abs(p01.item() - np.percentile(img, 1)) <= fine
    assert abs(p99.item() - np.percentile(img, 99)) <= fine


@pytest.mark.parametrize("sigma", [5.0, 20.0, 60.0])
def test_immerkaer_recovers_known_noise(sigma: float) -> None:
    img = _disc(7, sigma)
    ours = metrics.noise_sigma_immerkaer(_t(img)).item()
    assert ours == pytest.approx(reference.noise_sigma_immerkaer(img), rel=1e-10)
    assert ours == pytest.approx(sigma, rel=0.10)
    assert ours == pytest.approx(estimate_sigma(img, channel_axis=None), rel=0.10)


def test_public_functions_equal_compute_all_columns() -> None:
    x = _t(*PHANTOMS.values())
    allm = metrics.compute_all(x)
    low, high = metrics.clipped_share(x)
    mean, p01, p99 = metrics.intensity_stats(x)
    singles = {
        "sharpness": metrics.laplacian_variance(x),
        "tenengrad": metrics.tenengrad(x),
        "noise_sigma": metrics.noise_sigma_immerkaer(x),
        "snr": metrics.snr(x),
        "cnr": metrics.cnr(x),
        "cjv": metrics.cjv(x),
        "efc": metrics.efc(x),
        "fber": metrics.fber(x),
        "entropy": metrics.entropy(x),
        "dynamic_range": metrics.dynamic_range_used(x),
        "clip_low": low,
        "clip_high": high,
        "mean": mean,
        "p01": p01,
        "p99": p99,
        "is_blank": metrics.is_blank(x),
        "border_share": metrics.border_share(x),
    }
    assert set(singles) == set(metrics.METRIC_COLUMNS) == set(allm)
    for k, v in singles.items():
        torch.testing.assert_close(allm[k], v, rtol=1e-12, atol=0, equal_nan=True, msg=k)


# --------------------------------------------------------------------------- batching, dtypes


def test_batched_equals_one_by_one() -> None:
    imgs = [*PHANTOMS.values(), _chest(11), _chest(12, noise=80)]
    batched = metrics.compute_all(_t(*imgs), bits_stored=torch.tensor([12, 12, 12, 8, 12, 12, 16]))
    bits = [12, 12, 12, 8, 12, 12, 16]
    for i, img in enumerate(imgs):
        one = metrics.compute_all(_t(img), bits_stored=bits[i])
        for k in metrics.METRIC_COLUMNS:
            torch.testing.assert_close(batched[k][i : i + 1], one[k], equal_nan=True, msg=k)


def test_float32_close_to_float64() -> None:
    imgs = list(PHANTOMS.values())
    r64 = metrics.compute_all(_t(*imgs))
    r32 = metrics.compute_all(_t(*imgs, dtype=torch.float32))
    assert r32["snr"].dtype == torch.float32
    for k in metrics.METRIC_COLUMNS:
        if k == "is_blank":
            assert torch.equal(r32[k], r64[k])
            continue
        # Percentiles sit on bins whose edges move by rounding: allow a fine bin.
        torch.testing.assert_close(
            r32[k].double(), r64[k], rtol=2e-4, atol=1e-6, equal_nan=True, msg=k
        )


def test_half_precision_is_promoted() -> None:
    x = _t(PHANTOMS["natural"], dtype=torch.float16)
    out = metrics.compute_all(x)
    assert out["mean"].dtype == torch.float32
    assert math.isfinite(out["snr"].item())


def test_compute_all_numpy_frame() -> None:
    batch = np.stack([PHANTOMS["chest"], PHANTOMS["canister"]]).astype(np.float32)
    df = metrics.compute_all_numpy(batch, bits_stored=[12, 12])
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == list(metrics.METRIC_COLUMNS)
    assert len(df) == 2
    assert df["is_blank"].dtype == bool
    ref = reference.compute_all(batch[1], 12)
    assert df.loc[1, "cjv"] == pytest.approx(ref["cjv"], rel=1e-4)


def test_empty_batch() -> None:
    out = metrics.compute_all(torch.empty(0, 1, 8, 8))
    assert all(v.shape == (0,) for v in out.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    x = _t(*PHANTOMS.values(), dtype=torch.float32)
    cpu = metrics.compute_all(x, bits_stored=12)
    gpu = metrics.compute_all(x.cuda(), bits_stored=12)
    for k in metrics.METRIC_COLUMNS:
        assert gpu[k].device.type == "cpu"
        if k == "is_blank":
            assert torch.equal(gpu[k], cpu[k])
        else:
            torch.testing.assert_close(gpu[k], cpu[k], rtol=1e-4, atol=1e-4, equal_nan=True)
    assert metrics.snr(x.cuda()).device.type == "cuda"


# --------------------------------------------------------------------------- degradations


SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
def test_blur_lowers_sharpness(seed: int) -> None:
    img = _chest(seed)
    blurred = ndimage.gaussian_filter(img, 2.0)
    out = metrics.compute_all(_t(img, blurred))
    assert out["sharpness"][1] < 0.5 * out["sharpness"][0]
    assert out["tenengrad"][1] < 0.5 * out["tenengrad"][0]


@pytest.mark.parametrize("seed", SEEDS)
def test_more_noise_raises_sigma_and_lowers_snr(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    img = _chest(seed)
    # The phantom already has detector noise (sigma ~30) and its background holds anatomy,
    # so the added noise must be clearly above that to move SNR.
    levels = [img + rng.normal(0, s, img.shape) for s in (0.0, 150.0, 400.0)]
    out = metrics.compute_all(_t(*levels))
    assert torch.all(out["noise_sigma"].diff() > 0)
    assert torch.all(out["snr"].diff() < 0)
    assert torch.all(out["cjv"].diff() > 0)


@pytest.mark.parametrize("seed", SEEDS)
def test_under_exposure_raises_clip_low(seed: int) -> None:
    img = _chest(seed)
    under = np.clip(img * 0.3 - 100, 0, 4095)
    out = metrics.compute_all(_t(img, under), bits_stored=12)
    assert out["clip_low"][1] > 0.05 > out["clip_low"][0]
    assert out["dynamic_range"][1] < out["dynamic_range"][0]


@pytest.mark.parametrize("seed", SEEDS)
def test_over_exposure_raises_clip_high(seed: int) -> None:
    img = _chest(seed)
    over = np.clip(img * 1.9 + 900, 0, 4095)
    out = metrics.compute_all(_t(img, over))
    assert out["clip_high"][1] > 0.05 > out["clip_high"][0]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), top=st.floats(1000, 5000))
def test_inversion_leaves_noise_sigma_unchanged(seed: int, top: float) -> None:
    img = _disc(seed)
    out = metrics.noise_sigma_immerkaer(_t(img, top - img))
    assert out[1].item() == pytest.approx(out[0].item(), rel=1e-9)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), gain=st.floats(0.1, 10), offset=st.floats(-500, 500))
def test_cnr_cjv_entropy_invariant_to_gain_and_offset(
    seed: int, gain: float, offset: float
) -> None:
    img = _disc(seed)
    out = metrics.compute_all(_t(img, gain * img + offset))
    for k in ("cnr", "cjv", "entropy", "border_share"):
        assert out[k][1].item() == pytest.approx(out[k][0].item(), rel=1e-6), k
    assert out["noise_sigma"][1].item() == pytest.approx(gain * out["noise_sigma"][0].item())


@pytest.mark.parametrize("seed", SEEDS)
def test_border_band_raises_border_share(seed: int) -> None:
    img = _chest(seed).copy()
    base = metrics.border_share(_t(img)).item()
    banded = img.copy()
    banded[:20, :] = 4000.0  # collimator shadow at the top
    banded[:, -16:] = 4000.0  # and on the right
    share = metrics.border_share(_t(banded)).item()
    expected_min = 1 - (H - 20) * (W - 16) / (H * W)
    assert share >= expected_min > base


def test_reflect_padding_adds_no_border() -> None:
    img = _chest(3)
    wide = metrics.to_batch([img], size=(128, 256), keep_aspect=True, dtype=torch.float64)
    stretched = metrics.to_batch([img], size=(128, 256), dtype=torch.float64)
    assert wide.shape == stretched.shape == (1, 1, 128, 256)
    assert metrics.border_share(wide).item() < 0.3


# --------------------------------------------------------------------------- degenerate


def test_constant_image_is_blank_with_documented_nans() -> None:
    out = metrics.compute_all(torch.full((1, 1, 16, 20), 77.0), bits_stored=12)
    assert out["is_blank"].item() is True
    for k in ("snr", "cnr", "cjv", "fber", "border_share"):
        assert math.isnan(out[k].item()), k
    assert out["noise_sigma"].item() == 0
    assert out["sharpness"].item() == 0
    assert out["tenengrad"].item() == 0
    assert out["entropy"].item() == 0
    assert out["efc"].item() == pytest.approx(1.0)
    assert out["clip_low"].item() == out["clip_high"].item() == 1.0
    assert out["p01"].item() == out["p99"].item() == 77.0
    assert out["dynamic_range"].item() == 0.0
    assert math.isnan(metrics.dynamic_range_used(torch.full((1, 1, 4, 4), 3.0)).item())
    assert metrics.otsu_threshold(torch.full((1, 1, 4, 4), 3.0)).item() == 3.0


def test_zero_image_has_nan_efc() -> None:
    assert math.isnan(metrics.efc(torch.zeros(1, 1, 8, 8)).item())


def test_blank_exposure_with_readout_noise_is_blank() -> None:
    rng = np.random.default_rng(5)
    blank = phantoms.blank_image(rng, H, W, flat=False)
    out = metrics.compute_all(_t(blank, PHANTOMS["chest"]))
    assert out["is_blank"].tolist() == [True, False]
    assert reference.is_blank(blank) is True


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (1, 7), (3, 3)])
def test_tiny_images_do_not_crash(shape: tuple[int, int]) -> None:
    x = torch.arange(math.prod(shape), dtype=torch.float64).reshape(1, 1, *shape)
    out = metrics.compute_all(x)
    assert set(out) == set(metrics.METRIC_COLUMNS)
    if min(shape) < 3:
        assert math.isnan(out["noise_sigma"].item())


def test_two_pixel_foreground_threshold() -> None:
    x = torch.zeros(1, 1, 10, 10, dtype=torch.float64)
    x[0, 0, 0, 0] = 100.0  # one bright pixel: foreground of 1 < 2 pixels
    assert math.isnan(metrics.snr(x).item())
    x[0, 0, 0, 1] = 100.0
    assert math.isnan(metrics.snr(x).item())  # background is perfectly flat: sigma_B = 0
    assert math.isfinite(metrics.cjv(x).item())


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((2, 8, 8)), "torch.Tensor"),
        (torch.zeros(2, 8, 8), "shape"),
        (torch.zeros(2, 3, 8, 8), "shape"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.int32), "floating"),
    ],
)
def test_invalid_input_raises(bad: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        metrics.compute_all(bad)  # type: ignore[arg-type]


def test_bits_stored_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="bits_stored"):
        metrics.compute_all(torch.rand(3, 1, 8, 8), bits_stored=torch.tensor([12, 12]))


def test_to_batch_sizes_and_errors() -> None:
    imgs = [np.ones((40, 30)), np.ones((30, 40)), torch.ones(64, 64)]
    assert metrics.to_batch(imgs, size=32).shape == (3, 1, 32, 32)
    assert metrics.to_batch(imgs, size=32, keep_aspect=True).shape == (3, 1, 32, 32)
    padded = metrics.to_batch(imgs, size=32, keep_aspect=True)
    torch.testing.assert_close(padded, torch.ones_like(padded))
    with pytest.raises(ValueError, match="2-D"):
        metrics.to_batch([np.ones((2, 3, 4))])
