"""Learned image-quality model (IQA CNN): defect type, quality score and embedding.

Which function fits which need:

* :func:`load_model` + :func:`preprocess` + :func:`predict` - score display-windowed images
  with the shipped weights (what ``quality score`` does);
* :class:`IQANet` - the network itself, for training (:mod:`quality.imaging.train`) or for a
  caller that wants raw tensors (:class:`IQAOutput`);
* :func:`resolve_device` - the ``auto | cpu | cuda`` setting as a :class:`torch.device`.

Model
-----
A small residual CNN (about 0.9 M parameters) on one-channel ``INPUT_SIZE`` x ``INPUT_SIZE``
images in [0, 1]: a stride-2 stem, four stride-2 residual stages (BatchNorm + ReLU), then
global average **and** max pooling (max pooling keeps small bright artefacts and saturated
areas visible), a linear projection to ``EMBED_DIM`` and three heads:

* ``defect_logits`` (N, 8) over :data:`DEFECT_CLASSES`;
* ``quality`` (N,) = sigmoid of a linear head, 1 = good, 0 = unusable;
* ``embedding`` (N, EMBED_DIM), the L2-normalised projection that the two other heads read,
  so it is trained by both losses (for OOD and near-duplicate search).

The weights are trained on synthetic degradations of the demo phantoms only (see
``weights/MODEL_CARD.md`` and :mod:`quality.imaging.train`). Nothing is downloaded: the
weights ship in the package (:data:`WEIGHTS_PATH`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.typing import NDArray
from torch import Tensor, nn

from quality.errors import ModelWeightsError

__all__ = [
    "DEFECT_CLASSES",
    "EMBED_DIM",
    "INPUT_SIZE",
    "SCORER_VERSION",
    "WEIGHTS_PATH",
    "IQANet",
    "IQAOutput",
    "ModelWeightsError",
    "load_model",
    "n_parameters",
    "predict",
    "preprocess",
    "resolve_device",
]

DEFECT_CLASSES: tuple[str, ...] = (
    "clean",
    "blur",
    "noise",
    "under_exposed",
    "over_exposed",
    "inverted",
    "cropped",
    "artifact",
)
"""Defect classes, in the order of the ``defect_logits`` columns."""

INPUT_SIZE = 128
"""Side of the square network input, in pixels (the single source of that size)."""

EMBED_DIM = 128
"""Length of the L2-normalised embedding."""

SCORER_VERSION = "iqa-v1"
"""Version written to ``image_quality.scorer_version``; bump it when the weights change."""

WEIGHTS_PATH = Path(__file__).with_name("weights") / "iqa_v1.pt"
"""The shipped weights (a ``torch.save`` dict: ``state_dict`` plus metadata)."""

_STAGES: tuple[int, ...] = (16, 32, 64, 128, 192)


@dataclass
class IQAOutput:
    """Outputs of :meth:`IQANet.forward`.

    Attributes
    ----------
    defect_logits : Tensor, shape (N, 8), logits over :data:`DEFECT_CLASSES`.
    quality : Tensor, shape (N,), in [0, 1]; 1 = good.
    embedding : Tensor, shape (N, EMBED_DIM), unit L2 norm per row.
    """

    defect_logits: Tensor
    quality: Tensor
    embedding: Tensor


class _Block(nn.Module):
    """Residual block: two 3x3 convolutions, the first with ``stride``; 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
        )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.short(x))


class IQANet(nn.Module):
    """Small residual CNN with a defect-type head, a quality head and an embedding.

    Parameters
    ----------
    embed_dim : length of the embedding (default :data:`EMBED_DIM`).

    Notes
    -----
    Input ``(N, 1, INPUT_SIZE, INPUT_SIZE)`` float in [0, 1]. Feature maps: stem 16 x 64²,
    then stages of 32 x 32², 64 x 16², 128 x 8², 192 x 4²; pooled features are the
    concatenation of global mean and global max (384 values).
    """

    def __init__(self, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        c = _STAGES
        self.stem = nn.Sequential(
            nn.Conv2d(1, c[0], 3, 2, 1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU(inplace=True)
        )
        self.stages = nn.Sequential(*(_Block(c[i], c[i + 1], 2) for i in range(len(c) - 1)))
        self.project = nn.Linear(2 * c[-1], embed_dim)
        self.defect_head = nn.Linear(embed_dim, len(DEFECT_CLASSES))
        self.quality_head = nn.Linear(embed_dim, 1)

    def forward(self, x: Tensor) -> IQAOutput:
        """Run the network.

        Parameters
        ----------
        x : Tensor, shape (N, 1, INPUT_SIZE, INPUT_SIZE), float in [0, 1].

        Returns
        -------
        IQAOutput
        """
        # Centre the input so that the stem sees signed contrast (inversion is then a sign).
        f = self.stages(self.stem(x - 0.5))
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        e = self.project(pooled)
        h = F.relu(e)
        return IQAOutput(
            defect_logits=self.defect_head(h),
            quality=torch.sigmoid(self.quality_head(h)).squeeze(1),
            embedding=F.normalize(e.float(), dim=1),
        )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for a ``device`` setting.

    Parameters
    ----------
    device : ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
        ``"cuda:N"``, or a :class:`torch.device`.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        An unknown setting, or CUDA asked for where none is available.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but no CUDA device is available")
        return torch.device(name)
    raise ValueError(f"device must be one of auto, cpu, cuda, not {device!r}")


def _to_square(img: Tensor, size: int) -> Tensor:
    """(H, W) float in [0, 1] -> (size, size): aspect-preserving, anti-aliased, zero-padded."""
    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = img[None, None]
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (size - nh) // 2, (size - nw) // 2
    out = x.new_zeros((1, 1, size, size))
    out[..., top : top + nh, left : left + nw] = x
    return out[0, 0].clamp_(0.0, 1.0)


def preprocess(
    images: Sequence[NDArray[np.uint8] | NDArray[np.floating[Any]]],
    *,
    size: int = INPUT_SIZE,
) -> Tensor:
    """Display-windowed images to the network input.

    Each image is scaled so that its longer side is ``size`` (bilinear with anti-aliasing,
    ``torch.nn.functional.interpolate(..., antialias=True)``), keeping its aspect ratio,
    and centred on a black (0) square canvas: a non-square image gets black bands on its
    shorter sides, the way a detector's unexposed border looks.

    Parameters
    ----------
    images : sequence of 2-D arrays (H, W): ``uint8`` from :func:`quality.dicom.to_display`
        (divided by 255), or floats already in [0, 1] (values outside are clipped).
    size : output side (default :data:`INPUT_SIZE`).

    Returns
    -------
    Tensor, shape (N, 1, size, size), float32 in [0, 1], on the CPU.

    Raises
    ------
    ValueError
        An image that is not 2-D, is empty, or has an unsupported dtype.
    """
    out = torch.empty((len(images), 1, size, size), dtype=torch.float32)
    for i, img in enumerate(images):
        a = np.asarray(img)
        if a.ndim != 2 or a.size == 0:
            raise ValueError(f"image {i}: expected a non-empty 2-D array, got shape {a.shape}")
        if a.dtype == np.uint8:
            t = torch.from_numpy(a.astype(np.float32) / np.float32(255.0))
        elif np.issubdtype(a.dtype, np.floating):
            t = torch.from_numpy(np.nan_to_num(a.astype(np.float32, copy=False)))
            t = t.clamp(0.0, 1.0)
        else:
            raise ValueError(f"image {i}: dtype must be uint8 or floating, not {a.dtype}")
        out[i, 0] = _to_square(t, size)
    return out


def load_model(path: Path | str | None = None, *, device: str | torch.device = "auto") -> IQANet:
    """Load IQA weights into an :class:`IQANet` in eval mode.

    Parameters
    ----------
    path : a weights file written by :func:`quality.imaging.train.save_weights`
        (default :data:`WEIGHTS_PATH`, the shipped weights).
    device : see :func:`resolve_device`.

    Returns
    -------
    IQANet on ``device``, in eval mode. Its ``scorer_version`` attribute holds the
    version stored with the weights.

    Raises
    ------
    ModelWeightsError
        The file is missing, not a torch weights file, or does not match the network.
    """
    p = Path(path) if path is not None else WEIGHTS_PATH
    if not p.is_file():
        raise ModelWeightsError(p, "IQA weights not found; run `quality train-iqa` to create them")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors alike
        raise ModelWeightsError(p, f"cannot read the weights: {type(exc).__name__}") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ModelWeightsError(p, "not an IQA weights file (no 'state_dict' entry)")
    if int(blob.get("input_size", INPUT_SIZE)) != INPUT_SIZE:
        raise ModelWeightsError(
            p, f"weights are for input size {blob.get('input_size')}, not {INPUT_SIZE}"
        )
    model = IQANet(embed_dim=int(blob.get("embed_dim", EMBED_DIM)))
    state = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelWeightsError(p, f"weights do not fit IQANet: {str(exc)[:300]}") from exc
    model.scorer_version = str(blob.get("scorer_version", SCORER_VERSION))  # type: ignore[assignment]
    return model.to(resolve_device(device)).eval()


def predict(
    model: IQANet,
    x: Tensor | Sequence[NDArray[np.uint8] | NDArray[np.floating[Any]]],
    *,
    batch_size: int = 256,
) -> dict[str, NDArray[Any]]:
    """Score images with a loaded model.

    Runs under :func:`torch.inference_mode`, with :func:`torch.autocast` (float16 AMP) when
    the model is on CUDA.

    Parameters
    ----------
    model : from :func:`load_model` (its device is used).
    x : Tensor (N, 1, INPUT_SIZE, INPUT_SIZE) from :func:`preprocess`, or a sequence of
        display images that is passed through :func:`preprocess` first.
    batch_size : images per forward pass.

    Returns
    -------
    dict with
        ``defect_type`` : NDArray[str_], shape (N,), the arg-max class name;
        ``defect_probs`` : NDArray[float32], shape (N, 8), softmax over :data:`DEFECT_CLASSES`;
        ``quality`` : NDArray[float32], shape (N,), in [0, 1];
        ``embedding`` : NDArray[float32], shape (N, EMBED_DIM), unit rows.
    """
    if not isinstance(x, Tensor):
        x = preprocess(x)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"x must have shape (N, 1, H, W), not {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    dev = next(model.parameters()).device
    probs, quality, emb = [], [], []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size].to(dev, dtype=torch.float32, non_blocking=True)
            with torch.autocast(
                device_type="cuda", dtype=torch.float16, enabled=dev.type == "cuda"
            ):
                o = model(xb)
            probs.append(torch.softmax(o.defect_logits.float(), dim=1).cpu())
            quality.append(o.quality.float().cpu())
            emb.append(o.embedding.float().cpu())
    d = model.project.out_features
    p = torch.cat(probs).numpy() if probs else np.zeros((0, len(DEFECT_CLASSES)), np.float32)
    names = np.asarray(DEFECT_CLASSES)
    return {
        "defect_type": names[p.argmax(axis=1)] if len(p) else names[:0],
        "defect_probs": p.astype(np.float32),
        "quality": (torch.cat(quality).numpy() if quality else np.zeros(0)).astype(np.float32),
        "embedding": (torch.cat(emb).numpy() if emb else np.zeros((0, d))).astype(np.float32),
    }


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
