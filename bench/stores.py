"""Benchmark: ingest from a folder, an S3-compatible bucket and a PACS over DICOMweb, plus
thumbnail latency cold and warm.

Usage::

    .venv/bin/python bench/stores.py [--demo data_samples/dicom] [--runs 3] [--workers 8]

The same DICOM files (the demo store, about 380 files) are served three ways on loopback:

* the folder itself;
* moto's standalone S3 server (``tests/s3_server.py``), the files uploaded under a prefix;
* Debian's Orthanc with the DICOMweb plugin (``tests/orthanc_server.py``), the files
  uploaded through its REST API (Orthanc rejects the demo's deliberately corrupt files).

For each store, after one warm-up run, the median of ``--runs`` runs of:

* ``ours`` - :func:`quality.ingest.ingest` into a fresh, migrated SQLite DB (listing, reads,
  header parse, pixel hash, DB writes);
* ``peer`` - the plain client doing the same reads and the same work in a loop, without the
  DB: ``dcmread`` + ``sha256(PixelData)`` of each file (folder), boto3 ``get_object`` of each
  key (S3), dicomweb-client's ``retrieve_instance`` of each instance found by QIDO-RS
  (DICOMweb).

Then thumbnails of 24 images per store: cold (on-disk cache empty: decode, or the server's
rendering for DICOMweb), warm from the on-disk cache (a new process's first view), and warm
from memory. Loopback servers flatter the network; the ratios between stores and against the
peers are what carry over.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from quality.db.session import make_engine, upgrade  # noqa: E402
from quality.ingest import ingest  # noqa: E402

SALT = "bench-salt"


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """Median wall time of ``runs`` calls after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def ours(store_uri: str, workers: int | None) -> Callable[[], int]:
    def run() -> int:
        with tempfile.TemporaryDirectory() as tmp:
            engine = make_engine(f"sqlite:///{tmp}/bench.db")
            upgrade(engine)
            from sqlalchemy.orm import Session

            with Session(engine) as session:
                summary = ingest(session, store_uri, workers=workers, salt=SALT)
            engine.dispose()
        return summary.indexed

    return run


def _hash_bytes(data: bytes) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    value = ds.get("PixelData")
    return hashlib.sha256(value).hexdigest() if value is not None else None


def peer_folder(files: list[Path]) -> Callable[[], int]:
    def run() -> int:
        n = 0
        for path in files:
            try:
                _hash_bytes(path.read_bytes())
                n += 1
            except Exception:
                pass
        return n

    return run


def peer_s3(endpoint: str, bucket: str, prefix: str) -> Callable[[], int]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        region_name="us-east-1",
    )

    def run() -> int:
        n = 0
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                try:
                    _hash_bytes(body)
                    n += 1
                except Exception:
                    pass
        return n

    return run


def peer_dicomweb(http_url: str) -> Callable[[], int]:
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(url=f"{http_url}/dicom-web")

    def run() -> int:
        n = 0
        for inst in client.search_for_instances():
            st = inst["0020000D"]["Value"][0]
            se = inst["0020000E"]["Value"][0]
            sop = inst["00080018"]["Value"][0]
            ds = client.retrieve_instance(st, se, sop, media_types=(("application/dicom", "*"),))
            value = ds.get("PixelData")
            if value is not None:
                hashlib.sha256(value).hexdigest()
            n += 1
        return n

    return run


def report(name: str, n_files: int, t_ours: float, t_peer: float, peer: str) -> dict[str, Any]:
    row = {
        "store": name,
        "files": n_files,
        "ours_s": t_ours,
        "ours_files_per_s": n_files / t_ours,
        "peer": peer,
        "peer_s": t_peer,
        "peer_files_per_s": n_files / t_peer,
        "speedup_vs_peer": t_peer / t_ours,
    }
    print(
        f"{name:9s} {n_files:5d} files  ours {t_ours:6.2f} s ({n_files / t_ours:7.1f} files/s)"
        f"   {peer}: {t_peer:6.2f} s ({n_files / t_peer:7.1f} files/s)"
        f"   ours/peer speed ×{t_peer / t_ours:4.2f}",
        flush=True,
    )
    return row


def thumbs_latency(uris: list[str], cache_dir: Path) -> dict[str, float]:
    """Median ms per thumbnail: cold (empty disk cache), warm disk, warm memory."""
    from quality.store.thumbcache import ThumbCache
    from quality.ui import thumbs

    def one_pass() -> float:
        t0 = time.perf_counter()
        for uri in uris:
            thumbs.load_thumb(uri)
        return (time.perf_counter() - t0) * 1000 / len(uris)

    cache = ThumbCache(cache_dir, 64 * 2**20)
    cache.clear()
    thumbs.clear_caches(disk=cache)
    cold = one_pass()
    thumbs.clear_caches(disk=None)  # memory only: the next pass reads the disk cache
    warm_disk = one_pass()
    warm_mem = one_pass()
    return {"cold_ms": cold, "warm_disk_ms": warm_disk, "warm_memory_ms": warm_mem}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=ROOT / "data_samples" / "dicom")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--thumbs", type=int, default=24)
    args = parser.parse_args()

    from orthanc_server import OrthancServer, orthanc_available
    from s3_server import MotoServer, moto_available

    folder = args.demo.resolve()
    if not folder.is_dir():
        sys.exit(f"no demo store at {folder}: run `make demo` first")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    print(f"{len(files)} files under {folder}; {os.cpu_count()} cores; runs={args.runs}\n")
    rows = []

    t_ours, _ = timed(ours(str(folder), args.workers), args.runs)
    t_peer, _ = timed(peer_folder(files), args.runs)
    rows.append(report("folder", len(files), t_ours, t_peer, "dcmread+sha256 loop"))
    thumb_uris = {"folder": [str(p) for p in files[: args.thumbs]]}

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        reason = moto_available()
        if reason:
            print(f"S3: skipped ({reason})")
        else:
            with MotoServer() as moto:
                moto.upload_folder(folder, "bench", "demo")
                os.environ.update(moto.env())
                uri = "s3://bench/demo"
                t_ours, _ = timed(ours(uri, args.workers), args.runs)
                t_peer, _ = timed(peer_s3(moto.endpoint_url, "bench", "demo/"), args.runs)
                rows.append(report("s3", len(files), t_ours, t_peer, "boto3 get+hash loop"))
                keys = [p.relative_to(folder).as_posix() for p in files[: args.thumbs]]
                s3_uris = [f"s3://bench/demo/{k}" for k in keys]
                lat = thumbs_latency(s3_uris, tmp_path / "thumbs-s3")
                print(f"          thumbnails: {lat}")

        reason = orthanc_available()
        if reason:
            print(f"DICOMweb: skipped ({reason})")
        else:
            with OrthancServer(tmp_path / "orthanc") as pacs:
                accepted, rejected = pacs.upload_folder(folder)
                uri = pacs.dicomweb_root + "?source=bench"
                t_ours, _n = timed(ours(uri, args.workers), args.runs)
                t_peer, _ = timed(peer_dicomweb(pacs.http_url), args.runs)
                rows.append(report("dicomweb", accepted, t_ours, t_peer, "dicomweb-client loop"))
                from quality.store import open_store

                store = open_store(pacs.dicomweb_root)
                dw_uris = [e.uri for _, e in zip(range(args.thumbs), store.list(), strict=False)]
                lat = thumbs_latency(dw_uris, tmp_path / "thumbs-dw")
                print(f"          thumbnails: {lat}  ({rejected} corrupt files rejected)")

    lat = thumbs_latency(thumb_uris["folder"], Path(tempfile.mkdtemp()) / "thumbs-folder")
    print(f"folder    thumbnails: {lat}")


if __name__ == "__main__":
    main()
