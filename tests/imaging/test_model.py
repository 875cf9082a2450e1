"""Tests of the IQA CNN (quality/imaging/model.py) and its training (quality/imaging/train.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from quality.demo import phantoms
from quality.imaging.model import (
    DEFECT_CLASSES,
    EMBED_DIM,
    INPUT_SIZE,
    WEIGHTS_PATH,
    IQANet,
    ModelWeightsError,
    load_model,
    n_parameters,
    predict,
    preprocess,
    resolve_device,
)
from quality.imaging.train import WORK_SIZE, degrade_batch, quality_target, train_iqa


def _display(img: np.ndarray) -> np.ndarray:
    """Window to [0, 1] between the 1st and 99th percentile, as the demo's header window."""
    lo, hi = np.percentile(img, [1, 99])
    return np.clip((img - lo) / max(hi - lo, 1.0), 0.0, 1.0).astype(np.float32)


def _chest(rng: np.random.Generator, size: int) -> np.ndarray:
    anatomy = phantoms.chest_anatomy(rng)
    return phantoms.chest_radiograph(rng, anatomy, None, size, size)


@pytest.fixture(scope="module")
def tiny_clean() -> torch.Tensor:
    rng = np.random.default_rng(7)
    return preprocess([_display(_chest(rng, 64)) for _ in range(16)], size=64)


@pytest.fixture(scope="module")
def shipped() -> IQANet:
    return load_model(device="cpu")


# --------------------------------------------------------------------------- network


def test_forward_shapes_ranges_and_size() -> None:
    torch.manual_seed(0)
    model = IQANet().eval()
    x = torch.rand(3, 1, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        out = model(x)
    assert out.defect_logits.shape == (3, len(DEFECT_CLASSES))
    assert out.quality.shape == (3,)
    assert out.embedding.shape == (3, EMBED_DIM)
    assert bool(((out.quality >= 0) & (out.quality <= 1)).all())
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(3))
    assert n_parameters(model) <= 2_000_000


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("tpu")


def test_shipped_weights_load_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert WEIGHTS_PATH.is_file()
    assert WEIGHTS_PATH.stat().st_size < 5 * 1024 * 1024
    model = load_model(device="cpu")
    assert not model.training
    r = predict(model, torch.rand(2, 1, INPUT_SIZE, INPUT_SIZE))
    assert r["defect_probs"].shape == (2, 8)
    np.testing.assert_allclose(r["defect_probs"].sum(axis=1), 1.0, rtol=1e-5)
    assert set(r["defect_type"]) <= set(DEFECT_CLASSES)


def test_missing_and_corrupt_weights(tmp_path: Path) -> None:
    with pytest.raises(ModelWeightsError, match="not found"):
        load_model(tmp_path / "nope.pt", device="cpu")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ModelWeightsError, match="cannot read"):
        load_model(bad, device="cpu")


# --------------------------------------------------------------------------- preprocess


def test_preprocess_non_square_uint8_and_float() -> None:
    wide = np.full((50, 100), 255, np.uint8)
    tall = np.linspace(0, 1, 300 * 120, dtype=np.float64).reshape(300, 120)
    x = preprocess([wide, tall])
    assert x.shape == (2, 1, INPUT_SIZE, INPUT_SIZE)
    assert x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # Aspect kept: the wide image fills the middle 64 rows, black bands above and below.
    assert float(x[0, 0, INPUT_SIZE // 2].mean()) == pytest.approx(1.0)
    assert float(x[0, 0, :30].max()) == 0.0 and float(x[0, 0, -30:].max()) == 0.0
    # The tall image fills 51 of 128 columns in the middle.
    assert float(x[1, 0, :, :30].max()) == 0.0 and float(x[1, 0, :, -30:].max()) == 0.0
    assert float(x[1, 0, :, INPUT_SIZE // 2].std()) > 0.2
    with pytest.raises(ValueError, match="2-D"):
        preprocess([np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(ValueError, match="dtype"):
        preprocess([np.zeros((4, 4), np.int32)])


def test_predict_accepts_images() -> None:
    model = IQANet().eval()
    r = predict(model, [np.zeros((40, 60), np.uint8)])
    assert r["quality"].shape == (1,)
    assert r["embedding"].shape == (1, EMBED_DIM)


# --------------------------------------------------------------------------- training


def test_degradations_shapes_and_quality_target(tiny_clean: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(8)
    x = degrade_batch(tiny_clean[:8], labels, torch.rand(8, generator=gen), gen, out_size=32)
    assert x.shape == (8, 1, 32, 32)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    q = quality_target(labels, torch.ones(8))
    assert float(q[0]) == 1.0 and float(q[5]) == pytest.approx(0.3)
    assert bool((q[1:] < 0.61).all())


def test_training_is_reproducible(tiny_clean: torch.Tensor) -> None:
    # 8 images x 8 classes = 4 steps of 16 per run.
    tiny = tiny_clean[:8]
    kw = {"epochs": 1, "batch_size": 16, "holdout": 0.0}
    a = train_iqa(tiny, seed=3, **kw).model.state_dict()
    b = train_iqa(tiny, seed=3, **kw).model.state_dict()
    c = train_iqa(tiny, seed=4, **kw).model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


# --------------------------------------------------------------------------- shipped model


def test_shipped_model_classifies_fresh_degradations(shipped: IQANet) -> None:
    """Fresh phantoms (not in the demo data): demo-style degradations in detector units for
    blur, noise, over-exposure and inversion; ours for the rest, on the display image."""
    rng = np.random.default_rng(2024)
    gen = torch.Generator().manual_seed(2024)
    n = 6
    raw = [_chest(rng, 256) for _ in range(n)]
    images: list[np.ndarray] = []
    labels: list[int] = []
    demo_kinds = {"blur": "blur", "noise": "noise", "over_exposed": "over_exposure"}
    for img in raw:
        images.append(_display(img))
        labels.append(0)
        for ours, theirs in demo_kinds.items():
            out, _ = phantoms.degrade(img, theirs, rng, scale=0.5)
            images.append(_display(out))
            labels.append(DEFECT_CLASSES.index(ours))
        images.append(1.0 - _display(img))
        labels.append(DEFECT_CLASSES.index("inverted"))
    clean = preprocess([_display(img) for img in raw], size=WORK_SIZE)
    ours = torch.tensor([DEFECT_CLASSES.index(c) for c in ("under_exposed", "cropped", "artifact")])
    lab = ours.repeat(n)
    synth = degrade_batch(
        clean.repeat_interleave(len(ours), dim=0),
        lab,
        0.5 * torch.ones(len(lab)),
        gen,
        nuisance=False,
    )
    x = torch.cat([preprocess(images), synth])
    y = np.array(labels + lab.tolist())
    r = predict(shipped, x)
    pred = r["defect_probs"].argmax(axis=1)
    acc = float((pred == y).mean())
    print(f"shipped model accuracy on {len(y)} fresh degraded phantoms: {acc:.3f}")
    assert acc >= 0.6
    q = r["quality"]
    heavy = np.isin(y, [DEFECT_CLASSES.index(c) for c in ("blur", "noise", "over_exposed")])
    assert q[y == 0].mean() > q[heavy].mean() + 0.2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_forward_matches_cpu(shipped: IQANet) -> None:
    x = torch.rand(4, 1, INPUT_SIZE, INPUT_SIZE)
    cpu = predict(shipped, x)
    gpu = predict(load_model(device="cuda"), x)
    np.testing.assert_allclose(gpu["quality"], cpu["quality"], atol=2e-2)
    np.testing.assert_allclose(gpu["embedding"], cpu["embedding"], atol=5e-2)
