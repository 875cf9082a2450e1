"""Exact and near duplicate images: pixel hashes in SQL, perceptual hashes, clusters.

Which function fits which need:

* :func:`exact_duplicates` - images whose stored PixelData bytes are identical
  (``images.pixel_sha256``). Pure SQL (``GROUP BY pixel_sha256 HAVING COUNT(*) > 1``): no
  file is opened, so it is cheap at any scale. Use it first.
* :func:`near_duplicates` - images that *look* the same: re-sent, re-windowed, slightly
  shifted, re-scaled or re-noised copies. Every image is decoded and reduced to a 64-bit
  perceptual hash (:func:`perceptual_hash`) and a spectral signature
  (:func:`spectral_signatures`); pairs within ``max_hamming`` bits whose signatures agree
  are linked (optionally confirmed by an embedding cosine) and clustered. Exact copies found on the way
  are kept with ``kind = "exact"``, so the ``near`` label means "similar, not identical".
* :func:`duplicate_report` - both, plus the unreadable images and a per-image issue frame in
  the cleanlab style (``is_exact_duplicate_issue``, ``is_near_duplicate_issue``,
  ``near_duplicate_score``), in a :class:`DuplicateReport`.
* :func:`perceptual_hash` / :func:`perceptual_hashes` / :func:`difference_hashes` /
  :func:`spectral_signatures` /
  :func:`hamming_distance` / :func:`hamming_pairs` / :func:`cluster_pairs` - the array-level
  building blocks, without a database.

Perceptual hash
---------------
pHash after Zauner (2010): the image is reduced to ``4·hash_size`` squared (32×32) by area
averaging, a 2-D DCT-II is taken, and the ``hash_size × hash_size`` block of the lowest
frequencies *without* the DC row and column (``C[1:9, 1:9]``, as the reference pHash
implementation crops it) is compared with its median: bit ``k`` is 1 when coefficient ``k``
is above the median. Dropping the DC terms makes the hash invariant to a change of brightness
offset, and comparing with the median makes it invariant to a positive gain, so any positive
affine change of intensities (``a·I + b``, ``a > 0``) and the input dtype leave it unchanged.
Low frequencies survive a shift of a few pixels, mild noise and re-compression. A constant
image has all coefficients 0 and hashes to 0; :func:`near_duplicates` leaves such flat
images out of the pairing (they would all look alike) and lists them as skipped.

Scale
-----
The pair search XORs a row block of the ``uint64`` hash vector with the whole vector,
counts bits with :func:`numpy.bitwise_count` and multiplies the block's signatures with all
signatures (``float32``, 1,631 dimensions): ``O(n²)`` hash operations and ``O(n² d)``
multiply-adds, in blocks of about 4·10⁶ pairs, never a Python loop over pairs. Decoding
dominates below some 10⁴ images (about 10 ms per 512² image; ``workers`` threads help).

References
----------
.. [1] C. Zauner, "Implementation and Benchmarking of Perceptual Image Hash Functions",
   Master's thesis, Upper Austria University of Applied Sciences, Hagenberg, 2010.
.. [2] N. Krawetz, "Kind of like that", The Hacker Factor Blog, 2013 (the difference hash).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.fft
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sqlalchemy import Select, and_, func, select
from sqlalchemy.orm import Session

from quality.db.queries import _db_errors, newest_version_id
from quality.db.schema import DatasetItem, DatasetVersion, Image, Series, Source, Study
from quality.dicom import DecodedImage, load_pixels, to_display
from quality.errors import DicomReadError, StoreUnavailableError

__all__ = [
    "DUPLICATE_KINDS",
    "EXACT_COLUMNS",
    "ISSUE_COLUMNS",
    "NEAR_COLUMNS",
    "SKIPPED_COLUMNS",
    "DuplicateReport",
    "cluster_pairs",
    "difference_hashes",
    "duplicate_report",
    "exact_duplicates",
    "hamming_distance",
    "hamming_pairs",
    "near_duplicates",
    "perceptual_hash",
    "perceptual_hashes",
    "resolve_version",
    "spectral_signatures",
]

DUPLICATE_KINDS = ("exact", "near")
EXACT_COLUMNS = [
    "cluster_id",
    "image_id",
    "sop_uid",
    "uri",
    "patient_key",
    "source",
    "split",
    "pixel_sha256",
    "cluster_size",
]
NEAR_COLUMNS = [
    "cluster_id",
    "image_id",
    "sop_uid",
    "uri",
    "kind",
    "hamming_to_first",
    "similarity_to_first",
    "cosine_to_first",
    "cluster_size",
]
SKIPPED_COLUMNS = ["image_id", "sop_uid", "uri", "reason", "message"]
ISSUE_COLUMNS = [
    "image_id",
    "sop_uid",
    "is_exact_duplicate_issue",
    "is_near_duplicate_issue",
    "near_duplicate_score",
    "nearest_image_id",
    "nearest_hamming",
    "nearest_similarity",
]

ProgressFn = Callable[[int, int, str], None]
Loader = Callable[[str], DecodedImage]

_IN_CHUNK = 1000
# Pairs per block of the all-pairs search: 4M uint64 XORs, 32 MB.
_BLOCK_PAIRS = 1 << 22
DEFAULT_MAX_HAMMING = 10
"""pHash gate of :func:`near_duplicates` (bits out of 64); see its docstring for the tuning."""
DEFAULT_MIN_SIMILARITY = 0.9
"""Spectral-signature cosine that confirms a pHash candidate pair."""
SIGNATURE_SIZE = 128
"""Side of the reduction that :func:`spectral_signatures` takes the spectrum of."""
SIGNATURE_BAND = (2.0, 32.0)
"""Radial frequencies (cycles per image) kept in a spectral signature."""
# A display image whose 32x32 reduction varies by less than this (8-bit grey levels) is flat.
_FLAT_STD = 0.5


# --------------------------------------------------------------------------- hashing


def _area_resize(images: NDArray[np.float64], size: int) -> NDArray[np.float64]:
    """Area-average ``(..., H, W)`` down to ``(..., size, size)`` (adaptive average pooling).

    Output cell ``i`` averages input rows ``floor(i H / size)`` to ``ceil((i + 1) H / size)``
    (exclusive), read off a summed-area table; sizes need not divide.
    """
    h, w = images.shape[-2:]
    if h % size == 0 and w % size == 0:
        lead = images.shape[:-2]
        return images.reshape(*lead, size, h // size, size, w // size).mean(axis=(-3, -1))
    sat = np.zeros((*images.shape[:-2], h + 1, w + 1), dtype=np.float64)
    sat[..., 1:, 1:] = images.cumsum(axis=-2).cumsum(axis=-1)
    k = np.arange(size)
    r0, r1 = (k * h) // size, -((-(k + 1) * h) // size)
    c0, c1 = (k * w) // size, -((-(k + 1) * w) // size)
    total = (
        sat[..., r1[:, None], c1[None, :]]
        - sat[..., r0[:, None], c1[None, :]]
        - sat[..., r1[:, None], c0[None, :]]
        + sat[..., r0[:, None], c0[None, :]]
    )
    return total / ((r1 - r0)[:, None] * (c1 - c0)[None, :])


def _pack_bits(bits: NDArray[np.bool_]) -> NDArray[np.uint64]:
    """``(N, 64)`` booleans, most significant bit first, to ``(N,)`` ``uint64``."""
    weights = np.left_shift(np.uint64(1), np.arange(63, -1, -1, dtype=np.uint64))
    return (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def _as_stack(images: npt.ArrayLike | Sequence[npt.ArrayLike], size: int) -> NDArray[np.float64]:
    """Reduce 2-D images (one ``(N, H, W)`` array or a sequence of any shapes) to ``(N, s, s)``."""
    if isinstance(images, np.ndarray) and images.ndim == 3:
        return _area_resize(images.astype(np.float64, copy=False), size)
    if isinstance(images, np.ndarray) and images.ndim == 2:
        raise ValueError("images must be a stack (N, H, W) or a sequence of 2-D arrays")
    out = np.empty((len(images), size, size), dtype=np.float64)  # type: ignore[arg-type]
    for k, img in enumerate(images):  # type: ignore[union-attr]
        arr = np.asarray(img, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"image {k} must be 2-D, got shape {arr.shape}")
        if min(arr.shape) < 1:
            raise ValueError(f"image {k} is empty, shape {arr.shape}")
        out[k] = _area_resize(arr, size)
    return out


def perceptual_hashes(
    images: npt.ArrayLike | Sequence[npt.ArrayLike], *, hash_size: int = 8
) -> NDArray[np.uint64]:
    """pHash (Zauner 2010) of many 2-D images at once.

    ``h = Σ_k [C_k > median(C)] 2^(63-k)`` over the ``hash_size × hash_size`` DCT-II
    coefficients ``C = DCT(A)[1:hash_size+1, 1:hash_size+1]`` of the image area-averaged to
    ``A`` of shape ``(4·hash_size, 4·hash_size)`` (see the module docstring). Invariant to
    ``a·I + b`` with ``a > 0``; a constant image hashes to 0.

    Parameters
    ----------
    images : one array ``(N, H, W)`` or a sequence of ``N`` 2-D arrays of any shapes and
        dtypes (grey levels, high = bright).
    hash_size : side of the coefficient block; only 8 (64-bit hashes) is supported.

    Returns
    -------
    NDArray[np.uint64]
        Shape ``(N,)``.

    Raises
    ------
    ValueError
        ``hash_size`` other than 8, or an image that is not 2-D or is empty.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = rng.random((64, 64))
    >>> h = perceptual_hashes([img, 3 * img + 10, np.zeros((5, 7))])
    >>> bool(h[0] == h[1]), int(h[2])
    (True, 0)
    """
    if hash_size != 8:
        raise ValueError(f"hash_size must be 8 (64-bit hashes), not {hash_size}")
    small = _as_stack(images, 4 * hash_size)
    if small.shape[0] == 0:
        return np.zeros(0, dtype=np.uint64)
    coef = scipy.fft.dctn(small, type=2, axes=(1, 2), norm="ortho")
    block = coef[:, 1 : hash_size + 1, 1 : hash_size + 1].reshape(len(small), -1)
    # Coefficients that are zero up to rounding (flat images) must not set bits by noise.
    scale = np.abs(block).max(axis=1, keepdims=True)
    block = np.where(np.abs(block) <= 1e-9 * np.maximum(scale, 1e-300), 0.0, block)
    block = np.where(scale <= 1e-12, 0.0, block)
    med = np.median(block, axis=1, keepdims=True)
    return _pack_bits(block > med)


def perceptual_hash(image2d: npt.ArrayLike, *, hash_size: int = 8) -> int:
    """pHash (Zauner 2010) of one 2-D image as a Python ``int`` in ``[0, 2**64)``.

    See :func:`perceptual_hashes` for the formula. Identical images give identical hashes;
    the Hamming distance between two hashes measures how different they look (0 to 64).

    Parameters
    ----------
    image2d : 2-D array ``(H, W)``, any dtype.
    hash_size : only 8.

    Returns
    -------
    int
    """
    arr = np.asarray(image2d)
    if arr.ndim != 2:
        raise ValueError(f"image2d must be 2-D, got shape {arr.shape}")
    return int(perceptual_hashes([arr], hash_size=hash_size)[0])


def difference_hashes(
    images: npt.ArrayLike | Sequence[npt.ArrayLike], *, hash_size: int = 8
) -> NDArray[np.uint64]:
    """dHash (Krawetz 2013): signs of horizontal gradients of a 9×8 reduction.

    ``bit(r, c) = [A(r, c+1) > A(r, c)]`` for ``A`` the image area-averaged to
    ``hash_size × (hash_size + 1)``; 64 bits, most significant first. Faster and more
    sensitive to small shifts than pHash; offered for comparison and as a second opinion.

    Parameters
    ----------
    images : one array ``(N, H, W)`` or a sequence of 2-D arrays.
    hash_size : only 8.

    Returns
    -------
    NDArray[np.uint64]
        Shape ``(N,)``.
    """
    if hash_size != 8:
        raise ValueError(f"hash_size must be 8 (64-bit hashes), not {hash_size}")
    # Area-average to (9*8) x (9*8), then pool rows by 9 and columns by 8 -> 8 x 9.
    fine = _as_stack(images, 72)
    if fine.shape[0] == 0:
        return np.zeros(0, dtype=np.uint64)
    small = fine.reshape(len(fine), hash_size, 9, hash_size + 1, 8).mean(axis=(2, 4))
    bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(fine), -1)
    return _pack_bits(bits)


def spectral_signatures(
    images: npt.ArrayLike | Sequence[npt.ArrayLike],
    *,
    size: int = SIGNATURE_SIZE,
    band: tuple[float, float] = SIGNATURE_BAND,
) -> NDArray[np.float32]:
    """Whitened log power spectra: a shift-invariant fingerprint of an image's fine detail.

    For ``A`` the image area-averaged to ``size × size``, ``x = w ⊙ (A - mean A)`` with ``w``
    the 2-D Hann window, ``P(u, v) = |FFT2(x)|²`` on the half plane, kept where the radial
    frequency ``r = sqrt(u² + v²)`` lies in ``band`` (cycles per image). Then
    ``L = log P``, minus the mean of ``L`` over each ring ``round(r)`` of the same image,
    scaled to unit norm. Two signatures are compared by their dot product (a cosine).

    Why: a pHash keeps only the lowest frequencies, and images of one anatomy class (every
    PA chest film) share those, so unrelated images collide. The power spectrum keeps the
    image-specific detail (vessel and texture pattern, noise grain) but drops the phase, so a
    shift of a few pixels barely changes it (the Fourier shift theorem: a shift multiplies
    the transform by a unit-modulus phase); removing each ring's mean removes the common
    ``1/f`` fall-off and any gain, and the mean removal any offset. An image and its negative
    have the same signature, which is why :func:`near_duplicates` pairs it with the pHash
    (inverted: about 64 bits apart). A constant image has the zero vector.

    Parameters
    ----------
    images : one array ``(N, H, W)`` or a sequence of 2-D arrays.
    size : side of the reduction (at least 16).
    band : ``(r0, r1)`` with ``0 <= r0 < r1 <= size / 2``.

    Returns
    -------
    NDArray[np.float32]
        ``(N, D)`` unit-norm rows (zero rows for constant images); ``D`` depends on
        ``size`` and ``band`` (1,631 for the defaults).

    References
    ----------
    .. [1] B. S. Reddy and B. N. Chatterji, "An FFT-based technique for translation,
       rotation, and scale-invariant image registration", IEEE Trans. Image Process. 5(8),
       1996 (translation invariance of the Fourier magnitude).
    """
    if size < 16:
        raise ValueError(f"size must be at least 16, not {size}")
    r0, r1 = band
    if not 0 <= r0 < r1 <= size / 2:
        raise ValueError(f"band must satisfy 0 <= r0 < r1 <= size / 2 = {size / 2}, not {band}")
    a = _as_stack(images, size)
    x = a - a.mean(axis=(1, 2), keepdims=True)
    w = np.hanning(size)
    power = np.abs(np.fft.rfft2(x * np.outer(w, w), axes=(1, 2))) ** 2
    fy = np.fft.fftfreq(size) * size
    fx = np.fft.rfftfreq(size) * size
    rad = np.hypot(fy[:, None], fx[None, :])
    keep = (rad >= r0) & (rad <= r1)
    p = power[:, keep]
    # A floor relative to each image's power keeps log() finite without favouring any image.
    floor = 1e-12 * p.mean(axis=1, keepdims=True) + np.finfo(np.float64).tiny
    logp = np.log(p + floor)
    ring = np.rint(rad[keep]).astype(np.intp)
    _, ring = np.unique(ring, return_inverse=True)
    onehot = np.zeros((ring.size, ring.max() + 1))
    onehot[np.arange(ring.size), ring] = 1.0
    ring_mean = (logp @ onehot) / onehot.sum(axis=0)
    sig = logp - ring_mean[:, ring]
    norm = np.linalg.norm(sig, axis=1, keepdims=True)
    sig = np.divide(sig, norm, out=np.zeros_like(sig), where=norm > 1e-9)
    return sig.astype(np.float32)


def hamming_distance(a: npt.ArrayLike, b: npt.ArrayLike) -> NDArray[np.uint8]:
    """Bitwise Hamming distance of 64-bit hashes, broadcast: ``popcount(a XOR b)``.

    Parameters
    ----------
    a, b : ``uint64``-convertible arrays (or Python ints below ``2**64``), broadcastable.

    Returns
    -------
    NDArray[np.uint8]
        Distances in ``[0, 64]``.
    """
    x = np.asarray(a, dtype=np.uint64) ^ np.asarray(b, dtype=np.uint64)
    return np.bitwise_count(x)


def hamming_pairs(
    hashes: npt.ArrayLike,
    max_hamming: int,
    *,
    exclude: Callable[[slice], NDArray[np.bool_]] | None = None,
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.uint8]]:
    """All pairs ``i < j`` with ``popcount(h_i XOR h_j) <= max_hamming``.

    The search runs over row blocks of about 4·10⁶ pairs; inside a block everything is
    vectorised (no Python loop over pairs).

    Parameters
    ----------
    hashes : ``(N,)`` ``uint64``.
    max_hamming : largest distance that links two images (0 to 64).
    exclude : optional ``exclude(rows) -> (len(rows), N)`` boolean mask of pairs to drop,
        for the row block ``rows`` (a slice).

    Returns
    -------
    i, j : ``(P,)`` indices with ``i < j``, ordered by ``i`` then ``j``.
    d : ``(P,)`` their distances.
    """
    if not 0 <= max_hamming <= 64:
        raise ValueError(f"max_hamming must be in [0, 64], not {max_hamming}")
    h = np.asarray(hashes, dtype=np.uint64).ravel()
    n = len(h)
    step = max(1, _BLOCK_PAIRS // max(n, 1))
    out_i, out_j, out_d = [], [], []
    cols = np.arange(n)
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        d = np.bitwise_count(h[rows, None] ^ h[None, :])
        keep = (d <= max_hamming) & (cols[None, :] > np.arange(rows.start, rows.stop)[:, None])
        if exclude is not None:
            keep &= ~exclude(rows)
        bi, bj = np.nonzero(keep)
        out_i.append(bi + start)
        out_j.append(bj)
        out_d.append(d[bi, bj])
    if not out_i:
        return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, np.uint8)
    return (
        np.concatenate(out_i).astype(np.intp),
        np.concatenate(out_j).astype(np.intp),
        np.concatenate(out_d).astype(np.uint8),
    )


def cluster_pairs(n: int, i: npt.ArrayLike, j: npt.ArrayLike) -> NDArray[np.intp]:
    """Connected components of the graph on ``n`` nodes with edges ``(i, j)``.

    Returns
    -------
    NDArray[np.intp]
        ``(n,)`` cluster label per node: ``-1`` for a node without an edge, else ``0, 1, …``
        numbered by each cluster's smallest node index (deterministic).
    """
    ii, jj = np.asarray(i, dtype=np.intp), np.asarray(j, dtype=np.intp)
    labels = np.full(n, -1, dtype=np.intp)
    if n == 0 or ii.size == 0:
        return labels
    graph = coo_matrix((np.ones(ii.size, dtype=np.int8), (ii, jj)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    linked = np.zeros(n, dtype=bool)
    linked[ii] = True
    linked[jj] = True
    # Renumber the components that have an edge by their first (smallest) node.
    first = np.full(comp.max() + 1, n, dtype=np.intp)
    np.minimum.at(first, comp[linked], np.flatnonzero(linked))
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    labels[linked] = rank[comp[linked]]
    return labels


# --------------------------------------------------------------------------- SQL helpers


@_db_errors
def resolve_version(
    session: Session, *, dataset_id: int | None = None, version_id: int | None = None
) -> int | None:
    """The dataset version to scope an analysis to, or ``None`` for the whole store.

    ``version_id`` wins (it must belong to ``dataset_id`` when both are given); a lone
    ``dataset_id`` means its newest version (by ``created_at``, then id).

    Raises
    ------
    ValueError
        Unknown version, a version of another dataset, or a dataset without versions.
    """
    if version_id is not None:
        owner = session.scalar(
            select(DatasetVersion.dataset_id).where(DatasetVersion.id == version_id)
        )
        if owner is None:
            raise ValueError(f"dataset version {version_id} does not exist")
        if dataset_id is not None and owner != dataset_id:
            raise ValueError(
                f"dataset version {version_id} belongs to dataset {owner}, not {dataset_id}"
            )
        return int(version_id)
    if dataset_id is None:
        return None
    newest = newest_version_id(session, dataset_id)
    if newest is None:
        raise ValueError(f"dataset {dataset_id} has no versions (or does not exist)")
    return int(newest)


def _scoped(stmt: Select[Any], version_id: int | None) -> Select[Any]:
    """Restrict a statement over ``images`` to the items of a dataset version."""
    if version_id is None:
        return stmt
    return stmt.join(
        DatasetItem,
        and_(DatasetItem.image_id == Image.id, DatasetItem.version_id == version_id),
    )


# --------------------------------------------------------------------------- exact


@_db_errors
def exact_duplicates(
    session: Session, *, dataset_id: int | None = None, version_id: int | None = None
) -> pd.DataFrame:
    """Groups of images with identical stored pixels (same ``images.pixel_sha256``).

    Runs in SQL: a ``GROUP BY pixel_sha256 HAVING COUNT(*) > 1`` subquery finds the hashes,
    then only the members of those groups are fetched. ``cluster_id`` is the ``DENSE_RANK``
    of a group's smallest image id, so it does not depend on the row order of the DB.

    The hash is over the raw PixelData bytes, so the same pixels stored under two transfer
    syntaxes (raw and JPEG 2000) are *not* exact duplicates here; :func:`near_duplicates`
    catches them with ``kind = "exact"`` (decoded pixels compared).

    Parameters
    ----------
    session : an open session.
    dataset_id, version_id : scope to a dataset version (a lone ``dataset_id`` means its
        newest version; see :func:`resolve_version`); neither means every image in the store.

    Returns
    -------
    pd.DataFrame
        :data:`EXACT_COLUMNS`: ``cluster_id, image_id, sop_uid, uri, patient_key, source,
        split`` (``None`` without a version), ``pixel_sha256, cluster_size``; ordered by
        ``cluster_id, image_id``.
    """
    vid = resolve_version(session, dataset_id=dataset_id, version_id=version_id)
    groups = _scoped(
        select(
            Image.pixel_sha256.label("sha"),
            func.count().label("n"),
            func.min(Image.id).label("first_id"),
        ).where(Image.pixel_sha256.is_not(None)),
        vid,
    )
    groups = groups.group_by(Image.pixel_sha256).having(func.count() > 1).subquery("dup_groups")
    ranked = select(
        groups.c.sha,
        groups.c.n,
        (func.dense_rank().over(order_by=groups.c.first_id) - 1).label("cluster_id"),
    ).subquery("dup_ranked")
    split = DatasetItem.split if vid is not None else None
    stmt = (
        select(
            ranked.c.cluster_id,
            Image.id,
            Image.sop_uid,
            Image.uri,
            Study.patient_key,
            Source.name,
            *([split] if split is not None else []),
            Image.pixel_sha256,
            ranked.c.n,
        )
        .join(ranked, ranked.c.sha == Image.pixel_sha256)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
    )
    stmt = _scoped(stmt, vid).order_by(ranked.c.cluster_id, Image.id)
    rows = session.execute(stmt).all()
    cols = EXACT_COLUMNS if vid is not None else [c for c in EXACT_COLUMNS if c != "split"]
    out = pd.DataFrame(rows, columns=cols)
    if vid is None:
        out.insert(
            EXACT_COLUMNS.index("split"), "split", pd.Series([None] * len(out), dtype=object)
        )
    return out.astype({"cluster_id": "int64", "image_id": "int64", "cluster_size": "int64"})


# --------------------------------------------------------------------------- near


@dataclass
class _Decoded:
    small: NDArray[np.float64] | None
    signature: NDArray[np.float32] | None
    digest: str | None
    reason: str | None = None
    message: str | None = None


def _decode_one(uri: str, loader: Loader) -> _Decoded:
    """Decode one image: its 32x32 display-grey reduction, spectral signature, pixel digest."""
    try:
        img = loader(uri)
        frame = (img.n_frames - 1) // 2  # middle frame: the most typical of a cine/volume
        display = to_display(img, frame).astype(np.float64)
        digest = hashlib.blake2b(
            np.ascontiguousarray(img.frames).tobytes(), digest_size=16
        ).hexdigest()
    except DicomReadError as exc:
        return _Decoded(None, None, None, exc.kind, exc.message)
    except StoreUnavailableError:
        raise  # the store is down: not a defect of this image, and the rest would fail too
    except (OSError, ValueError, MemoryError) as exc:
        return _Decoded(None, None, None, "decode_error", f"{type(exc).__name__}: {exc}")
    fine = _area_resize(display, SIGNATURE_SIZE)
    return _Decoded(_area_resize(fine, 32), spectral_signatures(fine[None])[0], digest)


def _embedding_matrix(
    embeddings: pd.DataFrame, image_ids: NDArray[np.int64]
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Unit-norm embedding rows aligned to ``image_ids`` and a mask of which ones exist."""
    frame = embeddings
    if "image_id" in frame.columns:
        frame = frame.set_index("image_id")
    if "embedding" in frame.columns:
        vectors = np.stack([np.asarray(v, dtype=np.float64).ravel() for v in frame["embedding"]])
    else:
        numeric = frame.select_dtypes("number")
        if numeric.shape[1] == 0:
            raise ValueError(
                "embeddings must have an 'embedding' column of vectors or numeric columns"
            )
        vectors = numeric.to_numpy(dtype=np.float64)
    if not frame.index.is_unique:
        raise ValueError("embeddings: image_id values must be unique")
    pos = pd.Index(frame.index.astype("int64")).get_indexer(image_ids)
    has = pos >= 0
    out = np.zeros((len(image_ids), vectors.shape[1]), dtype=np.float64)
    out[has] = vectors[pos[has]]
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    has &= norm[:, 0] > 0
    out = np.divide(out, norm, out=np.zeros_like(out), where=norm > 0)
    return out, has


@dataclass
class _Scan:
    clusters: pd.DataFrame
    skipped: pd.DataFrame
    issues: pd.DataFrame


def _image_rows(session: Session, vid: int | None) -> pd.DataFrame:
    stmt = _scoped(
        select(Image.id, Image.sop_uid, Image.uri, Image.pixel_sha256, Image.series_id), vid
    ).order_by(Image.id)
    rows = session.execute(stmt).all()
    return pd.DataFrame(rows, columns=["image_id", "sop_uid", "uri", "pixel_sha256", "series_id"])


def _decode_all(
    uris: Sequence[str], loader: Loader, workers: int, progress: ProgressFn | None
) -> list[_Decoded]:
    total = len(uris)
    every = max(1, total // 200)
    if progress is not None:
        progress(0, total, "near-duplicates")
    out: list[_Decoded] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k, res in enumerate(pool.map(lambda u: _decode_one(u, loader), uris), 1):
            out.append(res)
            if progress is not None and (k % every == 0 or k == total):
                progress(k, total, "near-duplicates")
    return out


def _codes(values: Sequence[str | None]) -> NDArray[np.intp]:
    """Integer codes of strings; every missing value gets a code of its own."""
    keys = [v if v else f"\0missing-{k}" for k, v in enumerate(values)]
    return np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)[1]


def _scan(
    session: Session,
    *,
    dataset_id: int | None,
    version_id: int | None,
    max_hamming: int,
    min_similarity: float,
    embeddings: pd.DataFrame | None,
    min_cosine: float,
    within_series: bool,
    workers: int,
    loader: Loader,
    progress: ProgressFn | None,
) -> _Scan:
    if not 0 <= max_hamming <= 64:
        raise ValueError(f"max_hamming must be in [0, 64], not {max_hamming}")
    if not -1.0 <= min_similarity <= 1.0:
        raise ValueError(f"min_similarity must be in [-1, 1], not {min_similarity}")
    if not -1.0 <= min_cosine <= 1.0:
        raise ValueError(f"min_cosine must be in [-1, 1], not {min_cosine}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    vid = resolve_version(session, dataset_id=dataset_id, version_id=version_id)
    images = _image_rows(session, vid)
    decoded = _decode_all(images["uri"].tolist(), loader, workers, progress)

    readable = np.array([d.small is not None for d in decoded], dtype=bool)
    flat = np.array([d.small is not None and float(d.small.std()) < _FLAT_STD for d in decoded])
    out_idx = np.flatnonzero(~readable | flat)
    skipped = images.iloc[out_idx][["image_id", "sop_uid", "uri"]].reset_index(drop=True)
    skipped["reason"] = [decoded[k].reason if not readable[k] else "flat" for k in out_idx]
    skipped["message"] = [
        decoded[k].message if not readable[k] else "constant image: no perceptual hash"
        for k in out_idx
    ]

    usable = np.flatnonzero(readable & ~flat)
    sub = images.iloc[usable].reset_index(drop=True)
    n = len(sub)
    if n:
        small = np.stack([decoded[k].small for k in usable])  # type: ignore[misc]
        sig = np.stack([decoded[k].signature for k in usable])  # type: ignore[misc]
    else:
        small = np.zeros((0, 32, 32))
        sig = np.zeros((0, 1), dtype=np.float32)
    hashes = perceptual_hashes(small)
    # Same pixels: the same stored bytes, or the same decoded values (another transfer syntax).
    sha_code = _codes(sub["pixel_sha256"].tolist())
    dig_code = _codes([decoded[k].digest for k in usable])
    series = sub["series_id"].to_numpy(dtype=np.int64)
    ids = sub["image_id"].to_numpy(dtype=np.int64)

    link_i, link_j = [], []
    best = np.full(n, -1, dtype=np.intp)
    best_sim = np.full(n, -np.inf)
    cols = np.arange(n)
    step = max(1, _BLOCK_PAIRS // max(n, 1))
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        local = np.arange(rows.stop - rows.start)
        same = (sha_code[rows, None] == sha_code[None, :]) | (
            dig_code[rows, None] == dig_code[None, :]
        )
        cand = np.bitwise_count(hashes[rows, None] ^ hashes[None, :]) <= max_hamming
        if not within_series:
            # Slices of one volume look alike by design: there only identical pixels count.
            cand &= (series[rows, None] != series[None, :]) | same
        cand[local, local + start] = False
        sim = np.where(cand, sig[rows] @ sig.T, -np.inf)
        best[rows] = sim.argmax(axis=1)
        best_sim[rows] = sim[local, best[rows]]
        link = (cand & (sim >= min_similarity) | same) & (cols[None, :] > local[:, None] + start)
        bi, bj = np.nonzero(link)
        link_i.append(bi + start)
        link_j.append(bj)
    ii = np.concatenate(link_i) if link_i else np.zeros(0, np.intp)
    jj = np.concatenate(link_j) if link_j else np.zeros(0, np.intp)

    emb: NDArray[np.float64] | None = None
    has_emb = np.zeros(n, dtype=bool)
    if embeddings is not None and n:
        emb, has_emb = _embedding_matrix(embeddings, ids)
        both = has_emb[ii] & has_emb[jj]
        cos_pair = np.full(ii.size, np.nan)
        cos_pair[both] = np.einsum("ij,ij->i", emb[ii[both]], emb[jj[both]])
        identical = (sha_code[ii] == sha_code[jj]) | (dig_code[ii] == dig_code[jj])
        # An embedding can veto a look-alike, never an identical copy; no vector: keep.
        keep = identical | ~both | (cos_pair >= min_cosine)
        ii, jj = ii[keep], jj[keep]

    labels = cluster_pairs(n, ii, jj)
    members = np.flatnonzero(labels >= 0)
    lab = labels[members]
    size = np.bincount(lab) if lab.size else np.zeros(0, np.int64)
    first = np.full(size.size, n, dtype=np.intp)
    np.minimum.at(first, lab, members)
    anchor = first[lab]
    # kind: exact when another member of the same cluster has the same pixels.
    n_sha = pd.Series(members).groupby([lab, sha_code[members]]).transform("size").to_numpy()
    n_dig = pd.Series(members).groupby([lab, dig_code[members]]).transform("size").to_numpy()
    is_exact = (n_sha > 1) | (n_dig > 1)
    cos_first = np.full(members.size, np.nan)
    if emb is not None:
        ok = has_emb[members] & has_emb[anchor]
        cos_first[ok] = np.einsum("ij,ij->i", emb[members[ok]], emb[anchor[ok]])
    clusters = pd.DataFrame(
        {
            "cluster_id": lab.astype(np.int64),
            "image_id": ids[members],
            "sop_uid": sub["sop_uid"].to_numpy()[members],
            "uri": sub["uri"].to_numpy()[members],
            "kind": np.where(is_exact, "exact", "near"),
            "hamming_to_first": hamming_distance(hashes[members], hashes[anchor]).astype(np.int64),
            "similarity_to_first": np.einsum("ij,ij->i", sig[members], sig[anchor]).astype(
                np.float64
            ),
            "cosine_to_first": cos_first,
            "cluster_size": size[lab].astype(np.int64),
        },
        columns=NEAR_COLUMNS,
    ).sort_values(["cluster_id", "image_id"], ignore_index=True)

    has_nn = np.isfinite(best_sim)
    in_exact = np.zeros(n, dtype=bool)
    in_near = np.zeros(n, dtype=bool)
    in_exact[members[is_exact]] = True
    in_near[members[~is_exact]] = True
    nn = np.maximum(best, 0)
    issues = pd.DataFrame(
        {
            "image_id": ids,
            "sop_uid": sub["sop_uid"].to_numpy(),
            "is_exact_duplicate_issue": in_exact,
            "is_near_duplicate_issue": in_near,
            "near_duplicate_score": np.where(has_nn, np.clip(1.0 - best_sim, 0.0, 1.0), 1.0),
            "nearest_image_id": pd.Series(ids[nn], dtype="Int64").where(has_nn),
            "nearest_hamming": pd.Series(
                hamming_distance(hashes, hashes[nn]).astype(np.int64), dtype="Int64"
            ).where(has_nn),
            "nearest_similarity": np.where(has_nn, best_sim, np.nan),
        },
        columns=ISSUE_COLUMNS,
    )
    return _Scan(clusters, skipped[SKIPPED_COLUMNS], issues)


@_db_errors
def near_duplicates(
    session: Session,
    *,
    dataset_id: int | None = None,
    version_id: int | None = None,
    max_hamming: int = DEFAULT_MAX_HAMMING,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    embeddings: pd.DataFrame | None = None,
    min_cosine: float = 0.95,
    within_series: bool = False,
    workers: int = 1,
    loader: Loader = load_pixels,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Clusters of images that look the same: pHash candidates confirmed by fine detail.

    Steps:

    1. every image in scope is decoded (``loader``, default :func:`quality.dicom.load_pixels`),
       its middle frame windowed to 8-bit display grey by :func:`quality.dicom.to_display`
       (header window, else the 0.5-99.5 percentile window; MONOCHROME1 inverted), and
       area-averaged to 128×128;
    2. its 64-bit pHash (:func:`perceptual_hashes`, of the 32×32 reduction) and its spectral
       signature (:func:`spectral_signatures`);
    3. candidate pairs: ``popcount(h_i XOR h_j) <= max_hamming``, computed block-wise over
       all pairs. Pairs within one series are ignored unless their pixels are identical
       (slices of a volume look alike by design), unless ``within_series``;
    4. a candidate is linked when its signatures' cosine is at least ``min_similarity``;
       identical pixels are always linked;
    5. with ``embeddings``, a linked pair whose two vectors have a cosine below
       ``min_cosine`` is dropped (a pair with a missing vector, or identical pixels, stays);
    6. connected components of the links (:func:`cluster_pairs`).

    Why two stages: the pHash keeps only the lowest frequencies, which every image of one
    anatomy class shares. On the demo (seed 0, ``size="small"``, dataset scope) the pHash
    alone needs 4 bits to find every seeded copy, and then flags 213 images (precision
    0.03; no gate does better at recall 1); adding the spectral check at 0.9 gives
    recall 1.0 and precision 1.0 for every ``max_hamming`` from 6 to 64 (the seeded copies
    sit at 0-6 bits and cosines >= 0.988; the closest unrelated pair at cosine 0.65).

    A member whose pixels (stored bytes or decoded values) equal another member's gets
    ``kind = "exact"``; the others ``"near"``. Images that cannot be read, and flat
    (constant) images, which have no meaningful hash, are left out and listed in
    ``result.attrs["skipped"]`` (:data:`SKIPPED_COLUMNS`); they never stop the scan.

    Parameters
    ----------
    session : an open session.
    dataset_id, version_id : scope (see :func:`resolve_version`); neither: the whole store.
    max_hamming : pHash gate, in bits out of 64 (default :data:`DEFAULT_MAX_HAMMING`).
    min_similarity : spectral-signature cosine that confirms a candidate (default
        :data:`DEFAULT_MIN_SIMILARITY`); ``-1`` turns the check off (pHash only).
    embeddings : optional frame ``image_id`` → vector (an ``embedding`` column of arrays, or
        one numeric column per dimension), e.g. from the quality CNN, to confirm pairs.
    min_cosine : cosine a pair's embeddings must reach to stay linked.
    within_series : also pair images of the same series.
    workers : decoding threads.
    loader : ``uri -> DecodedImage``; a store other than local paths plugs in here.
    progress : called as ``progress(done, total, "near-duplicates")`` while decoding.

    Returns
    -------
    pd.DataFrame
        :data:`NEAR_COLUMNS`: ``cluster_id`` (0, 1, … by each cluster's smallest image id),
        ``image_id, sop_uid, uri, kind`` (``exact``/``near``), ``hamming_to_first`` (pHash
        bits to the cluster's smallest image id), ``similarity_to_first`` (signature
        cosine to it), ``cosine_to_first`` (embedding cosine; NaN without embeddings),
        ``cluster_size``; ordered by ``cluster_id, image_id``.
    """
    scan = _scan(
        session,
        dataset_id=dataset_id,
        version_id=version_id,
        max_hamming=max_hamming,
        min_similarity=min_similarity,
        embeddings=embeddings,
        min_cosine=min_cosine,
        within_series=within_series,
        workers=workers,
        loader=loader,
        progress=progress,
    )
    out = scan.clusters
    out.attrs["skipped"] = scan.skipped
    return out


# --------------------------------------------------------------------------- report


@dataclass
class DuplicateReport:
    """Exact and near duplicates of one scope, and what could not be checked.

    Attributes
    ----------
    version_id : the dataset version analysed, or ``None`` for the whole store.
    exact : :func:`exact_duplicates` (:data:`EXACT_COLUMNS`).
    near : :func:`near_duplicates` (:data:`NEAR_COLUMNS`).
    skipped : unreadable or flat images (:data:`SKIPPED_COLUMNS`).
    issues : one row per hashed image (:data:`ISSUE_COLUMNS`), in the cleanlab style:
        ``is_exact_duplicate_issue``, ``is_near_duplicate_issue`` and
        ``near_duplicate_score = clip(1 - s_nn, 0, 1)`` with ``s_nn`` the highest
        spectral-signature cosine to a pHash candidate (0: a look-alike exists; 1: no
        candidate at all), plus that neighbour's id, pHash distance and cosine.
    max_hamming : the threshold used.
    """

    version_id: int | None
    exact: pd.DataFrame
    near: pd.DataFrame
    skipped: pd.DataFrame
    issues: pd.DataFrame = field(repr=False)
    max_hamming: int = DEFAULT_MAX_HAMMING

    @property
    def n_exact_clusters(self) -> int:
        return int(self.exact["cluster_id"].nunique())

    @property
    def n_exact_images(self) -> int:
        return len(self.exact)

    @property
    def n_near_clusters(self) -> int:
        """Clusters with at least one ``near`` member."""
        return int(self.near.loc[self.near["kind"] == "near", "cluster_id"].nunique())

    @property
    def n_near_images(self) -> int:
        return int((self.near["kind"] == "near").sum())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, the clusters as lists of SOP UIDs, the skipped images."""

        def clusters(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return [
                {
                    "cluster_id": int(cid),
                    "kinds": sorted(set(g["kind"])) if "kind" in g else ["exact"],
                    "sop_uids": g["sop_uid"].tolist(),
                }
                for cid, g in frame.groupby("cluster_id", sort=True)
            ]

        return {
            "version_id": self.version_id,
            "max_hamming": self.max_hamming,
            "n_exact_clusters": self.n_exact_clusters,
            "n_exact_images": self.n_exact_images,
            "n_near_clusters": self.n_near_clusters,
            "n_near_images": self.n_near_images,
            "n_skipped": len(self.skipped),
            "exact": clusters(self.exact),
            "near": clusters(self.near),
            "skipped": self.skipped[["sop_uid", "reason"]].to_dict("records"),
        }


def duplicate_report(
    session: Session,
    *,
    dataset_id: int | None = None,
    version_id: int | None = None,
    max_hamming: int = DEFAULT_MAX_HAMMING,
    min_similarity: float = DEFAULT_MIN_SIMILARITY,
    embeddings: pd.DataFrame | None = None,
    min_cosine: float = 0.95,
    within_series: bool = False,
    workers: int = 1,
    loader: Loader = load_pixels,
    progress: ProgressFn | None = None,
) -> DuplicateReport:
    """Exact (SQL) and near (pHash) duplicates of one scope, in a :class:`DuplicateReport`.

    Parameters are those of :func:`exact_duplicates` and :func:`near_duplicates`.
    """
    vid = resolve_version(session, dataset_id=dataset_id, version_id=version_id)
    exact = exact_duplicates(session, version_id=vid)
    scan = _db_errors(_scan)(
        session,
        dataset_id=None,
        version_id=vid,
        max_hamming=max_hamming,
        min_similarity=min_similarity,
        embeddings=embeddings,
        min_cosine=min_cosine,
        within_series=within_series,
        workers=workers,
        loader=loader,
        progress=progress,
    )
    return DuplicateReport(vid, exact, scan.clusters, scan.skipped, scan.issues, max_hamming)
