"""Benchmark of the dataset card on the medium demo: the builder, the CLI end to end, and a
naive pandas peer that computes the same counts.

Usage::

    .venv/bin/python bench/card.py [--runs 3] [--data bench/.data/medium]

The medium demo (``quality demo --size medium``, seed 0, about a minute on 2 cores) is built
into ``--data`` when it is missing, and its DB is migrated to the newest schema. Then, on
that DB, each contender is warmed up once and timed ``--runs`` times, interleaved, and the
median is printed:

* **ours, full card**: :func:`quality.card.build_card` (SQL aggregates, plus Krippendorff's
  alpha with a 200-resample bootstrap interval) and :func:`quality.card.card_markdown`;
* **ours, counts**: the same with one bootstrap resample, i.e. the SQL aggregates and one
  alpha: the work the peer does;
* **naive pandas peer**: every table involved (``dataset_items``, ``images``, ``series``,
  ``studies``, ``sources``, ``annotations``, ``annotators``, ``labeling_tasks``,
  ``reference_labels``, ``image_quality``) read whole with ``pandas.read_sql``, joined with
  ``merge`` and aggregated with ``groupby``: the same counts, sources, devices, splits,
  class balance (gold, else majority, ties apart), coverage and alpha;
* **CLI**: ``quality card chest-xray-demo --db URL`` in a subprocess (interpreter start and
  imports included).

It prints ``peer / ours`` for the counts (above 1: we are faster) and checks that the
peer's numbers equal ours, so a speed-up never hides a wrong value. There is no published
peer for a dataset card; the naive pandas way is what a notebook would do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from quality.agreement.categorical import krippendorff_alpha  # noqa: E402
from quality.card import build_card, card_markdown  # noqa: E402
from quality.db.session import make_engine, upgrade  # noqa: E402

DATASET = "chest-xray-demo"


def ensure_demo(folder: Path) -> str:
    """The medium demo's DB URL; built with ``quality demo`` when missing."""
    db = folder / "demo.db"
    url = f"sqlite:///{db}"
    if not db.exists() or not (folder / "demo_truth.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        db.unlink(missing_ok=True)
        print(f"building the medium demo into {folder} (about a minute) ...", flush=True)
        subprocess.run(
            [str(ROOT / ".venv/bin/quality"), "demo", "--size", "medium", "--seed", "0",
             "--out", str(folder), "--db", url, "--json"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


# --------------------------------------------------------------------------- contenders


def ours(engine: Engine, n_resamples: int) -> tuple[Any, str]:
    with Session(engine) as s:
        card = build_card(s, DATASET, n_resamples=n_resamples)
    return card, card_markdown(card)


def _read(engine: Engine, table: str) -> pd.DataFrame:
    with engine.connect() as c:
        return pd.read_sql(text(f"SELECT * FROM {table}"), c)


def naive(engine: Engine) -> dict[str, Any]:
    """Whole tables into pandas, then merges and groupbys (a notebook's way)."""
    t = {
        name: _read(engine, name)
        for name in (
            "datasets", "dataset_versions", "dataset_items", "images", "series", "studies",
            "sources", "annotations", "annotators", "labeling_tasks", "reference_labels",
            "image_quality",
        )
    }  # fmt: skip
    ds_id = int(t["datasets"].loc[t["datasets"]["name"] == DATASET, "id"].iloc[0])
    versions = t["dataset_versions"].loc[t["dataset_versions"]["dataset_id"] == ds_id]
    vid = int(versions.sort_values(["created_at", "id"]).iloc[-1]["id"])
    items = t["dataset_items"].loc[t["dataset_items"]["version_id"] == vid, ["image_id", "split"]]
    joined = (
        items.merge(t["images"][["id", "series_id"]], left_on="image_id", right_on="id")
        .drop(columns="id")
        .merge(
            t["series"][["id", "study_id", "manufacturer", "model"]].rename(
                columns={"id": "series_id"}
            ),
            on="series_id",
        )
        .merge(
            t["studies"][["id", "patient_key", "modality", "study_date", "source_id"]].rename(
                columns={"id": "study_id"}
            ),
            on="study_id",
        )
        .merge(
            t["sources"][["id", "name", "manufacturer"]].rename(
                columns={"id": "source_id", "name": "source", "manufacturer": "vendor"}
            ),
            on="source_id",
            how="left",
        )
    )
    tasks = t["labeling_tasks"].loc[t["labeling_tasks"]["dataset_id"] == ds_id]
    ann = t["annotations"].merge(
        t["annotators"][["id", "kind"]].rename(columns={"id": "annotator_id"}), on="annotator_id"
    )
    ann = ann.loc[ann["task_id"].isin(tasks["id"]) & ann["image_id"].isin(items["image_id"])]
    out: dict[str, Any] = {
        "counts": {
            "images": len(joined),
            "studies": joined["study_id"].nunique(),
            "series": joined["series_id"].nunique(),
            "patients": joined["patient_key"].nunique(),
            "sources": joined["source_id"].nunique(),
            "annotations": len(ann),
            "annotators": ann["annotator_id"].nunique(),
            "doctors": ann.loc[ann["kind"] == "doctor", "annotator_id"].nunique(),
            "experts": ann.loc[ann["kind"] == "expert", "annotator_id"].nunique(),
        },
        "sources": joined.groupby("source").agg(
            n_images=("image_id", "size"),
            n_studies=("study_id", "nunique"),
            n_patients=("patient_key", "nunique"),
        ),
        "devices": joined.groupby(["manufacturer", "model"]).size(),
        "splits": joined.groupby("split").agg(
            n_images=("image_id", "size"),
            n_studies=("study_id", "nunique"),
            n_patients=("patient_key", "nunique"),
        ),
        "cross_split": int((joined.groupby("patient_key")["split"].nunique() > 1).sum()),
    }
    coverage, balance, alpha = {}, {}, {}
    for task in tasks.itertuples():
        rows = ann.loc[ann["task_id"] == task.id]
        readers = rows.groupby("image_id")["annotator_id"].nunique()
        coverage[task.name] = (float((readers >= 2).sum() / len(items)), float(readers.mean()))
        if task.kind != "classification":
            continue
        # Raw SQL hands the JSON column back as text on SQLite.
        classes = json.loads(task.classes) if isinstance(task.classes, str) else task.classes
        valid = rows.loc[rows["label"].isin(classes)]
        newest = valid.sort_values(["created_at", "id"]).drop_duplicates(
            ["image_id", "annotator_id"], keep="last"
        )
        votes = newest.groupby(["image_id", "label"]).size().rename("n").reset_index()
        top = votes.loc[votes["n"] == votes.groupby("image_id")["n"].transform("max")]
        n_top = top.groupby("image_id")["label"].transform("size")
        majority = top.assign(label=top["label"].where(n_top == 1, "(tie)")).drop_duplicates(
            "image_id"
        )
        refs = t["reference_labels"]
        gold = refs.loc[
            (refs["task_id"] == task.id)
            & (refs["kind"] == "gold")
            & refs["label"].isin(classes)
            & refs["image_id"].isin(items["image_id"])
        ].sort_values("id")
        gold = gold.drop_duplicates("image_id", keep="last")[["image_id", "label"]]
        final = pd.concat(
            [
                gold,
                majority.loc[~majority["image_id"].isin(gold["image_id"]), ["image_id", "label"]],
            ]
        )
        labelled = items.merge(final, on="image_id", how="left").fillna({"label": "(unlabelled)"})
        balance[task.name] = labelled.groupby(["split", "label"]).size()
        wide = newest.pivot(index="annotator_id", columns="image_id", values="label")
        codes = pd.Index(classes)
        rel = np.full(wide.shape, np.nan)
        present = wide.notna().to_numpy()
        rel[present] = codes.get_indexer(wide.to_numpy()[present])
        alpha[task.name] = krippendorff_alpha(rel, level="nominal")
    out |= {"coverage": coverage, "balance": balance, "alpha": alpha}
    return out


def same_numbers(card: Any, peer: dict[str, Any]) -> list[str]:
    """Where the peer's numbers differ from the card's (empty: all equal)."""
    bad = []
    if card.counts != {k: int(v) for k, v in peer["counts"].items()}:
        bad.append(f"counts {card.counts} != {peer['counts']}")
    src = card.sources.set_index("source")[["n_images", "n_studies", "n_patients"]]
    if not src.sort_index().equals(peer["sources"].sort_index().astype("int64")):
        bad.append("sources")
    spl = card.splits.set_index("split")[["n_images", "n_studies", "n_patients"]]
    if not spl.sort_index().equals(peer["splits"].sort_index().astype("int64")):
        bad.append("splits")
    if int(card.devices["n_images"].sum()) != int(peer["devices"].sum()):
        bad.append("devices")
    if card.n_cross_split_patients != peer["cross_split"]:
        bad.append("cross-split patients")
    for row in card.tasks.itertuples():
        share, mean = peer["coverage"][row.task]
        if not (np.isclose(row.share_multi_read, share) and np.isclose(row.readers_mean, mean)):
            bad.append(f"coverage of {row.task}")
    for task, series in peer["balance"].items():
        ours_ = card.class_balance.loc[card.class_balance["task"] == task]
        if dict(
            zip(zip(ours_["split"], ours_["label"], strict=True), ours_["n_images"], strict=True)
        ) != {k: int(v) for k, v in series.items()}:
            bad.append(f"class balance of {task}")
    for row in card.agreement.itertuples():
        if not np.isclose(row.estimate, peer["alpha"][row.task]):
            bad.append(f"alpha of {row.task}")
    return bad


def cli(url: str) -> None:
    subprocess.run(
        [str(ROOT / ".venv/bin/quality"), "card", DATASET, "--db", url],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--data", type=Path, default=ROOT / "bench/.data/medium")
    args = parser.parse_args(argv)
    url = ensure_demo(args.data)
    engine = make_engine(url)
    with engine.connect() as c:
        sizes = {
            t: c.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("images", "dataset_items", "annotations", "image_quality")
        }
    print(f"medium demo {url}: {sizes}", flush=True)

    contenders: dict[str, Callable[[], Any]] = {
        "ours: full card (alpha CI, 200 resamples) + Markdown": lambda: ours(engine, 200),
        "ours: counts (1 resample) + Markdown": lambda: ours(engine, 1),
        "naive pandas: whole tables, merge, groupby": lambda: naive(engine),
        "CLI end to end: quality card": lambda: cli(url),
    }
    results: dict[str, Any] = {}
    for name, fn in contenders.items():  # warm-up
        results[name] = fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.runs):  # interleaved
        for name, fn in contenders.items():
            seconds, _ = timed(fn)
            times[name].append(seconds)
    engine.dispose()

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, m in medians.items():
        runs = ", ".join(f"{t:.3f}" for t in times[name])
        print(f"{name:<56} median {m:7.3f} s   ({runs})")
    card, _ = results["ours: counts (1 resample) + Markdown"]
    mismatches = same_numbers(card, results["naive pandas: whole tables, merge, groupby"])
    ratio = (
        medians["naive pandas: whole tables, merge, groupby"]
        / medians["ours: counts (1 resample) + Markdown"]
    )
    print(f"\npeer / ours (counts): {ratio:.2f}x  (above 1: ours is faster)")
    print("same numbers as the peer: " + ("yes" if not mismatches else f"NO: {mismatches}"))
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
