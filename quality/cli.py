"""The ``quality`` command line.

Contract (DESIGN.md): the DB is ``--db URL``, else ``QUALITY_DB_URL``, else
``sqlite:///data_samples/demo.db``. Every command accepts ``--json``. Exit codes: 0 fine,
1 a check or alert fired, 2 bad usage or bad input (message on stderr).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from quality.config import get_settings
from quality.errors import QualityError

__all__ = ["app", "main"]

app = typer.Typer(
    name="quality",
    help="Quality Workbench: data quality for medical-imaging ML.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
app.add_typer(db_app, name="db")

err = Console(stderr=True)
out = Console()

DbOpt = Annotated[
    str | None, typer.Option("--db", help="SQLAlchemy DB URL (else QUALITY_DB_URL, else demo DB).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON document on stdout.")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _emit(payload: dict[str, Any], as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(payload, default=str, indent=2) + "\n")
    else:
        human()


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar on stderr; yields ``update(done, total, label)``."""
    if not enabled:
        yield lambda done, total, label: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as prog:
        tasks: dict[str, Any] = {}

        def update(done: int, total: int, label: str) -> None:
            if label not in tasks:
                tasks[label] = prog.add_task(label, total=total)
            prog.update(tasks[label], completed=done, total=total)

        yield update


def _engine(db: str | None):  # type: ignore[no-untyped-def]
    from quality.db.session import make_engine

    return make_engine(get_settings(db_url=db).db_url)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Create or migrate the schema to the newest revision."""
    from quality.db.session import safe_url, upgrade

    engine = _engine(db)
    try:
        upgrade(engine)
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    _emit(
        {"db": safe_url(engine), "revision": "head"},
        as_json,
        lambda: out.print(f"schema of {safe_url(engine)} is up to date"),
    )


@app.command()
def demo(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for DICOMs and truth file.")
    ] = Path("data_samples"),
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same data.")] = 0,
    size: Annotated[str, typer.Option(help="small | medium | large")] = "small",
    scale: Annotated[
        float,
        typer.Option(help="large only: multiplies every count (10^5 studies at 1.0)."),
    ] = 1.0,
    base: Annotated[
        str, typer.Option(hidden=True, help="large only: the demo scaled up (tests: tiny).")
    ] = "small",
    workers: Annotated[int | None, typer.Option(help="Ingest processes (default: cores).")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate deterministic synthetic DICOMs, annotations and predictions, with seeded truth.

    ``--size large`` builds the small demo, scores it, then scales the DB up to 10^5 studies,
    2x10^5 images, 10^6 annotations by 60 doctors and 4x10^5 predictions over 180 days
    (``--scale`` shrinks it); it needs ``--db`` or QUALITY_DB_URL, PostgreSQL recommended.
    """
    from quality.db.session import session_scope, upgrade
    from quality.demo import SIZES, build_demo, build_large

    if size not in SIZES:
        raise _fail(f"--size must be one of {', '.join(SIZES)}, not {size!r}")
    if size != "large" and (scale != 1.0 or base != "small"):
        raise _fail("--scale applies to --size large only")
    settings = get_settings(db_url=db)
    if db is None and "QUALITY_DB_URL" not in os.environ:
        if size == "large":
            raise _fail(
                "--size large needs a database: pass --db URL or set QUALITY_DB_URL "
                "(PostgreSQL, e.g. postgresql+psycopg://user@host/db; SQLite works but is slow "
                "at this size)"
            )
        settings.db_url = f"sqlite:///{out_dir / 'demo.db'}"
    engine = _engine(settings.db_url)
    try:
        upgrade(engine)
        with _progress(not as_json) as update, session_scope(engine) as session:
            if size == "large":
                summary = build_large(
                    session,
                    out_dir,
                    seed=seed,
                    salt=settings.phi_salt,
                    scale=scale,
                    base=base,
                    workers=workers,
                    progress=update,
                )
            else:
                summary = build_demo(
                    session,
                    out_dir,
                    seed=seed,
                    size=size,
                    salt=settings.phi_salt,
                    workers=workers,
                    progress=update,
                )
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    payload = summary.as_dict()
    _emit(payload, as_json, lambda: out.print_json(data=payload))


@app.command()
def ingest(
    uri: Annotated[
        str,
        typer.Argument(
            help="Image store: a folder (recursive), s3://bucket/prefix or "
            "dicomweb+http(s)://host/dicom-web (credentials from QUALITY_S3_* / "
            "QUALITY_DICOMWEB_* or .streamlit/secrets.toml)."
        ),
    ],
    workers: Annotated[int | None, typer.Option(help="Parser processes (default: cores).")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Index DICOM headers and pixel hashes into the DB; idempotent and resumable."""
    from quality.db.session import session_scope, upgrade
    from quality.ingest import ingest as run_ingest

    settings = get_settings(db_url=db)
    engine = _engine(settings.db_url)
    try:
        upgrade(engine)
        with _progress(not as_json) as update, session_scope(engine) as session:
            summary = run_ingest(
                session, uri, workers=workers, salt=settings.phi_salt, progress=update
            )
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    payload = summary.as_dict()
    # The JSON summary is the contract for pipelines: always printed, pretty unless --json.
    _emit(payload, as_json, lambda: out.print_json(data=payload))


TaskOpt = Annotated[str, typer.Option("--task", help="Labeling task: its id or its name.")]


def _resolve_task(session: Any, task: str) -> int:
    """The id of ``task`` (an id or a unique name); a QualityError listing the valid ones."""
    from quality.db.queries import list_tasks
    from quality.errors import LabelDataError

    tasks = list_tasks(session)
    valid = ", ".join(f"{i} ({n})" for i, n in zip(tasks["id"], tasks["name"], strict=True))
    by_id = tasks.loc[tasks["id"].astype(str) == task.strip()]
    hits = by_id if len(by_id) else tasks.loc[tasks["name"] == task]
    if len(hits) == 1:
        return int(hits["id"].iloc[0])
    what = "is ambiguous (use the id)" if len(hits) > 1 else "does not exist"
    raise LabelDataError("--task", "", f"task {task!r} {what}; valid: {valid or 'none'}")


@app.command()
def doctors(
    task: TaskOpt,
    fmt: Annotated[str, typer.Option("--format", help="md | html | csv")] = "md",
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the report here instead of stdout.")
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Doctor-quality report of a labeling task: ranking, flags, CIs (exit 0: a report is
    not a check)."""
    from sqlalchemy.orm import Session

    from quality.doctors import build_doctor_report

    if fmt not in ("md", "html", "csv"):
        raise _fail(f"--format must be one of md, html, csv, not {fmt!r}")
    engine = _engine(db)
    try:
        with Session(engine) as session:
            report = build_doctor_report(session, _resolve_task(session, task))
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    text = {"md": report.to_markdown, "html": report.to_html, "csv": report.to_csv}[fmt]()
    if out_file is not None:
        out_file.write_text(text, encoding="utf-8")
    if as_json:
        _emit(report.as_dict(), True, lambda: None)
    elif out_file is None:
        sys.stdout.write(text)
    else:
        err.print(f"wrote {out_file}", highlight=False)


@app.command()
def agreement(task: TaskOpt, db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """Agreement of a labeling task: alpha with CI, percent agreement, Fleiss, pairwise kappa."""
    from sqlalchemy.orm import Session

    from quality.agreement.summary import build_agreement_summary

    engine = _engine(db)
    try:
        with Session(engine) as session:
            summary = build_agreement_summary(session, _resolve_task(session, task))
    except QualityError as exc:
        raise _fail(str(exc)) from exc

    def human() -> None:
        a = summary.alpha
        fleiss = "n/a" if summary.fleiss is None else f"{summary.fleiss:.3f}"
        out.print(f"task {summary.task.name!r} (id {summary.task.id}, {summary.task.kind})")
        out.print(
            f"Krippendorff alpha (nominal): {a['estimate']:.3f} "
            f"[{a['low']:.3f}, {a['high']:.3f}] over {a['n_items']} items, "
            f"{a['n_annotators']} annotators"
        )
        out.print(f"percent agreement: {summary.percent_agreement:.3f}; Fleiss kappa: {fleiss}")
        out.print("pairwise Cohen's kappa (diagonal 1 by convention; blank: too few shared):")
        sys.stdout.write(summary.pairwise_kappa.round(2).to_string(na_rep="") + "\n")

    _emit(summary.as_dict(), as_json, human)


@app.command("train-iqa")
def train_iqa(
    data: Annotated[Path, typer.Option("--data", help="Folder written by `quality demo`.")] = Path(
        "data_samples"
    ),
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the clean images.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same weights.")] = 0,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Weights file (default: the shipped iqa_v1.pt)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda (else QUALITY_DEVICE).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train the IQA CNN on the clean demo images with synthetic degradations; write the
    weights and MODEL_CARD.md beside them."""
    from quality.imaging.model import WEIGHTS_PATH, resolve_device
    from quality.imaging.train import run_training

    dev_name = device or get_settings().device
    try:
        dev = resolve_device(dev_name)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    weights = out_file or WEIGHTS_PATH
    try:
        with _progress(not as_json) as update:
            result = run_training(
                data, epochs=epochs, seed=seed, out=weights, device=dev, progress=update
            )
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    payload = {"weights": str(weights), "model_card": str(weights.with_name("MODEL_CARD.md"))}
    payload |= result.as_dict()

    def human() -> None:
        h = result.holdout
        out.print(f"wrote {weights} ({payload['n_parameters']:,} parameters)")
        out.print(f"trained {result.epochs} epochs in {result.seconds:.0f} s")
        if h:
            out.print(f"held-out accuracy {h['accuracy']:.3f} over {h['n_images']} images")
            for name, acc in h["per_class"].items():
                out.print(f"  {name:<14} {acc:.3f}")

    _emit(payload, as_json, human)


@app.command()
def score(
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset name or id (default: all images).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto | cpu | cuda (else QUALITY_DEVICE).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")] = 32,
    chunk_size: Annotated[
        int,
        typer.Option(
            "--chunk-size", min=1, help="Images per commit (and per Dask task): a kill loses one."
        ),
    ] = 256,
    workers: Annotated[int, typer.Option(min=0, help="Decode processes (local).")] = 0,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler tcp://HOST:PORT: score on its workers.")
    ] = None,
    embeddings_dir: Annotated[
        Path | None,
        typer.Option("--embeddings-dir", help="Embedding files (default: beside a SQLite DB)."),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score image quality (metrics, defect CNN, OOD) into image_quality; resumable."""
    from sqlalchemy.orm import Session

    from quality.imaging.score import score_images

    settings = get_settings(db_url=db)
    engine = _engine(settings.db_url)
    if embeddings_dir is None and engine.url.get_backend_name() == "sqlite" and engine.url.database:
        embeddings_dir = Path(engine.url.database).parent / "embeddings"
    try:
        with _progress(not as_json) as update, Session(engine) as session:
            summary = score_images(
                session,
                dataset_id=dataset,
                device=device or settings.device,
                batch_size=batch_size,
                chunk_size=chunk_size,
                workers=workers,
                scheduler=scheduler,
                progress=update,
                embeddings_dir=embeddings_dir,
            )
    except (QualityError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    payload = summary.as_dict()
    _emit(payload, as_json, lambda: out.print_json(data=payload))


# --- card (dataset card, dataset snapshot) ---
dataset_app = typer.Typer(help="Dataset versions: immutable snapshots.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


def _parse_diff(diff: str) -> tuple[str, str]:
    """``OLD:NEW`` → ``(old, new)``; bad usage exits 2."""
    old, sep, new = diff.partition(":")
    if not sep or not old.strip() or not new.strip():
        raise _fail(f"--diff must be OLD:NEW (two version names, e.g. v1:v2), not {diff!r}")
    return old.strip(), new.strip()


@app.command()
def card(
    dataset: Annotated[str, typer.Argument(help="Dataset name or id.")],
    fmt: Annotated[str, typer.Option("--format", help="md | json (the status API)")] = "md",
    version: Annotated[
        str | None, typer.Option("--version", help="Version to describe (default: newest).")
    ] = None,
    diff: Annotated[
        str | None,
        typer.Option("--diff", help="Versions of the Changes section, as OLD:NEW (e.g. v1:v2)."),
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the card here instead of stdout.")
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Dataset card of a dataset version, built live from the DB: Markdown with YAML front
    matter, or the JSON status (exit 0: a card is a report, not a check)."""
    from sqlalchemy.orm import Session

    from quality.card import build_card, card_markdown, card_status

    if as_json:
        fmt = "json"
    if fmt not in ("md", "json"):
        raise _fail(f"--format must be one of md, json, not {fmt!r}")
    pair = _parse_diff(diff) if diff is not None else None
    engine = _engine(db)
    try:
        with Session(engine) as session:
            built = build_card(session, dataset, version, diff=pair)
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    if fmt == "json":
        payload = card_status(built)
        if built.changes is not None:
            payload["diff"] = built.changes.as_dict()
        text = json.dumps(payload, default=str, indent=2) + "\n"
    else:
        text = card_markdown(built)
    if out_file is not None:
        out_file.write_text(text, encoding="utf-8")
        err.print(f"wrote {out_file}", highlight=False)
    if out_file is None or as_json:
        sys.stdout.write(text)


@dataset_app.command("snapshot")
def dataset_snapshot(
    dataset: Annotated[str, typer.Argument(help="Dataset name or id.")],
    note: Annotated[
        str | None, typer.Option("--note", help="Stored with the version: what and why.")
    ] = None,
    add_new: Annotated[
        bool,
        typer.Option("--add-new", help="Also take in images that are in no version yet."),
    ] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Freeze the dataset's working set as a new immutable version (v2, v3, ...) with a
    content hash; "unchanged" (exit 0, nothing written) when the hash equals the newest's."""
    from quality.db.session import session_scope, upgrade
    from quality.snapshot import snapshot

    engine = _engine(db)
    try:
        upgrade(engine)  # a writer, like ingest: bring the schema to head first
        with session_scope(engine) as session:
            result = snapshot(session, dataset, note=note, add_new=add_new)
    except QualityError as exc:
        raise _fail(str(exc)) from exc

    def human() -> None:
        digest = result.content_hash[:12]
        if result.created:
            since = f" from {result.previous}" if result.previous else ""
            new = f", {result.n_new:,} new" if result.n_new else ""
            out.print(
                f"{result.dataset}: created {result.version}{since} "
                f"({result.n_items:,} images{new}); content hash {digest}…",
                highlight=False,
                soft_wrap=True,
            )
        else:
            out.print(
                f"{result.dataset}: unchanged; the working set equals {result.version} "
                f"(content hash {digest}…)",
                highlight=False,
                soft_wrap=True,
            )

    _emit(result.as_dict(), as_json, human)


# --- check (data tests) ---


def _check_store(store: str | None) -> Any:
    """The image store for ``quality check``: ``--store`` (must open), else the configured
    ``QUALITY_STORE`` when its folder exists, else None (the store checks are not run)."""
    from quality.store import open_store

    if store is not None:
        return open_store(store)
    configured = get_settings().store
    try:
        return open_store(configured)
    except QualityError:
        err.print(
            f"note: store {configured!r} cannot be opened; the file and near-duplicate "
            "checks are not run (give --store)",
            highlight=False,
        )
        return None


def _check_table(report: Any) -> None:
    from rich.table import Table

    marks = {"passed": "[green]PASS[/]", "failed": "[red]FAIL[/]", "not_run": "[dim]SKIP[/]"}
    table = Table(title=f"data tests of {report.scope.dataset} {report.scope.version}")
    table.add_column("")
    table.add_column("check", no_wrap=True)  # whole names: they are what users grep for
    for col in ("severity", "failed", "checked", "what was found"):
        table.add_column(col, overflow="fold")
    for o in report.outcomes:
        name = o.name + (f" (line {o.line})" if o.line is not None else "")
        failed = f"{o.n_failed:,}" if o.status == "failed" else ""
        table.add_row(marks[o.status], name, o.severity, failed, f"{o.n_checked:,}", o.message)
    out.print(table)
    verdict = "[green]PASSED[/]" if report.passed else "[red]FAILED[/]"
    run = f" (run {report.run_id})" if report.run_id is not None else " (not saved)"
    out.print(f"{verdict}{run}: an error-severity check failing fails the run")


@app.command()
def check(
    dataset: Annotated[str, typer.Argument(help="Dataset name or id.")],
    rules: Annotated[
        Path | None, typer.Option("--rules", help="Analysts' rules file (YAML).")
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option("--reference", help="Distribution reference: a version, or START..END dates."),
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Version to check (default: newest).")
    ] = None,
    store: Annotated[
        str | None, typer.Option("--store", help="Image store (default: QUALITY_STORE).")
    ] = None,
    suggest: Annotated[
        Path | None,
        typer.Option("--suggest-rules", help="Write rules derived from the version here."),
    ] = None,
    no_save: Annotated[
        bool, typer.Option("--no-save", help="Do not store the run in check_runs.")
    ] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Data tests of a dataset version: built-in checks, rules, distribution against a
    reference; exit 1 when an error-severity check fails."""
    from sqlalchemy.orm import Session

    from quality.checks import run_checks, suggest_rules
    from quality.rules import load_rules

    settings = get_settings(db_url=db)
    engine = _engine(settings.db_url)
    emb_dir = None
    if engine.url.get_backend_name() == "sqlite" and engine.url.database:
        candidate = Path(engine.url.database).parent / "embeddings"
        emb_dir = candidate if candidate.is_dir() else None
    try:
        ruleset = load_rules(rules) if rules is not None else None
        image_store = _check_store(store)
        with Session(engine) as session:
            if suggest is not None:
                text = suggest_rules(session, dataset, version)
                suggest.write_text(text, encoding="utf-8")
                err.print(f"wrote suggested rules to {suggest}", highlight=False)
            report = run_checks(
                session,
                dataset,
                version=version,
                rules=ruleset,
                reference=reference,
                store=image_store,
                embeddings_dir=emb_dir,
                save=not no_save,
                workers=min(4, os.cpu_count() or 1),
            )
    except (QualityError, OSError) as exc:
        raise _fail(str(exc)) from exc
    _emit(report.as_dict(), as_json, lambda: _check_table(report))
    if not report.passed:
        raise typer.Exit(1)


# --- drift ---


@app.command()
def drift(
    dataset: Annotated[str, typer.Argument(help="Dataset name or id ('all': every image).")],
    reference: Annotated[
        str | None,
        typer.Option(help="Reference period START:END (ISO dates; default: first 4 weeks)."),
    ] = None,
    current: Annotated[
        str | None,
        typer.Option(help="Current period START:END (default: after the reference to the end)."),
    ] = None,
    window: Annotated[str, typer.Option(help="Window length: 7D, 1W, 14D, ...")] = "7D",
    by: Annotated[str, typer.Option(help="Subgroup column (source, manufacturer, ...; none).")] = (
        "source"
    ),
    test: Annotated[
        list[str] | None,
        typer.Option("--test", help="Per-column test override COLUMN=TEST (repeatable)."),
    ] = None,
    alpha: Annotated[float, typer.Option(help="Benjamini-Hochberg FDR level.")] = 0.05,
    report: Annotated[
        str | None,
        typer.Option("--report", help="Write a monitoring report instead: md | html."),
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Report file (default: stdout).")
    ] = None,
    period: Annotated[str, typer.Option(help="Report period: 8h, 1D, 7D, ...")] = "1D",
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Drift and missing-input alerts per window and source (exit 1 when an alert fires)."""
    from rich.table import Table
    from sqlalchemy.orm import Session

    from quality.drift import (
        build_drift_report,
        monitoring_report,
        parse_date_range,
        parse_period,
        parse_test_overrides,
    )

    if report is not None and report not in ("md", "html"):
        raise _fail(f"--report must be md or html, not {report!r}")
    try:
        ref = parse_date_range(reference, option="--reference")
        cur = parse_date_range(current, option="--current")
        parse_period(window, option="--window")
        parse_period(period, option="--period", whole_days=False)
        tests = parse_test_overrides(test)
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    scope = None if dataset.strip().lower() == "all" else dataset
    group = None if by.strip().lower() in ("", "none") else by
    engine = _engine(db)
    try:
        with Session(engine) as session:
            if report is not None:
                text, result = monitoring_report(
                    session, scope, period=period, since=cur[0], until=cur[1],
                    format=report, reference=ref, by=group, tests=tests, alpha=alpha,
                )  # fmt: skip
            else:
                built = build_drift_report(
                    session, scope, reference=ref, current=cur, window=window, by=group,
                    tests=tests, alpha=alpha,
                )  # fmt: skip
    except QualityError as exc:
        raise _fail(str(exc)) from exc

    if report is not None:
        if out_file is not None:
            out_file.write_text(text, encoding="utf-8")
        payload = {
            "report": str(out_file) if out_file else None,
            "format": report,
            "alerted": result.alerted,
            "n_alerts": len(result.alerts),
        }
        if as_json:
            _emit(payload, True, lambda: None)
        elif out_file is None:
            sys.stdout.write(text)
        else:
            err.print(f"wrote {out_file}", highlight=False)
        raise typer.Exit(1 if result.alerted else 0)

    def human() -> None:
        r = built.result
        out.print(
            f"dataset {built.dataset or 'all images'}: {len(built.features):,} images; "
            f"reference {r.reference[0]} – {r.reference[1]}, current {r.current[0]} – "
            f"{r.current[1]}, {r.n_windows} windows of {r.window_days} d × {len(r.scopes)} "
            "scopes",
            highlight=False,
        )
        if not built.alerted:
            out.print("[green]no alert[/]")
            return
        table = Table(title="Alerts", show_lines=False)
        for col in ("kind", "scope", "window", "what", "detail"):
            table.add_column(col, overflow="fold")
        for rec in r.alerts.to_dict("records"):
            table.add_row(
                rec["kind"], rec["scope"], f"{rec['window_start']} – {rec['window_end']}",
                str(rec["what"]), rec["detail"],
            )  # fmt: skip
        out.print(table)

    _emit(built.as_dict(), as_json, human)
    raise typer.Exit(1 if built.alerted else 0)


# --- eda ---


@app.command()
def eda(
    dataset: Annotated[str, typer.Argument(help="Dataset name or id.")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Automatic profile of a dataset's metadata, labels, coverage and missing values."""
    from sqlalchemy.orm import Session

    from quality.db.queries import resolve_dataset
    from quality.eda import eda_profile

    try:
        engine = _engine(db)
        with Session(engine) as session:
            profile = eda_profile(session, resolve_dataset(session, dataset))
    except (QualityError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    payload = profile.as_dict()

    def human() -> None:
        out.print(f"[bold]{dataset}[/]: {profile.n_images} images")
        for fact in profile.facts:
            out.print(f"  • {fact.message}", highlight=False)

    _emit(payload, as_json, human)


# --- review-export ---


@app.command("review-export")
def review_export(
    model_version: Annotated[
        str | None,
        typer.Option(
            "--model-version", help="MODEL:VERSION, a version name, or an id (default: all)."
        ),
    ] = None,
    session_id: Annotated[
        int | None, typer.Option("--session", help="Only the predictions of this review session.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv | json")] = "csv",
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the export here instead of stdout.")
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export clinicians' spot-check verdicts, one row per (prediction, reviewer), with the
    agreement per model version (exit 0: an export is not a check)."""
    from sqlalchemy.orm import Session

    from quality import audit
    from quality.review import (
        export_reviews,
        resolve_model_version,
        review_summary,
        reviews_to_csv,
        reviews_to_records,
    )

    if fmt not in ("csv", "json"):
        raise _fail(f"--format must be one of csv, json, not {fmt!r}")
    engine = _engine(db)
    try:
        with Session(engine) as session:
            mv = resolve_model_version(session, model_version) if model_version else None
            rows = export_reviews(session, model_version_id=mv, review_session_id=session_id)
            summary = review_summary(session, model_version_id=mv, review_session_id=session_id)
            # Verdicts are personnel data: every export is in the audit log.
            audit.record(
                session,
                _cli_actor(),
                "export",
                target=out_file.name if out_file is not None else "stdout",
                details={"what": "verdicts", "rows": len(rows), "format": fmt},
            )
            session.commit()
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    records = reviews_to_records(rows)
    if fmt == "csv":
        text = reviews_to_csv(rows)
    else:
        text = json.dumps(records, indent=2) + "\n"
    if out_file is not None:
        try:
            out_file.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise _fail(f"cannot write {out_file}: {exc}") from exc
    if as_json:
        payload = {
            "model_version_id": mv,
            "session_id": session_id,
            "n_reviews": len(rows),
            "out": str(out_file) if out_file is not None else None,
            "agreement": summary.as_dict()["by_version"],
        }
        if out_file is None:
            payload["reviews"] = records
        _emit(payload, True, lambda: None)
    elif out_file is None:
        sys.stdout.write(text)
    else:
        err.print(f"wrote {len(rows)} verdicts to {out_file}", highlight=False)


# --- rank ---


@app.command()
def rank(
    dataset: Annotated[str, typer.Argument(help="Dataset name or id.")],
    model_version: Annotated[
        str,
        typer.Option(
            "--model-version", help="Model version: its id, MODEL:VERSION, or a unique version."
        ),
    ],
    strategy: Annotated[
        str, typer.Option(help="entropy | margin | committee | diversity | random")
    ] = "entropy",
    budget: Annotated[int, typer.Option(min=1, help="Images in the worklist.")] = 100,
    task: Annotated[
        str | None,
        typer.Option("--task", help="Labeling task id or name (default: the model's task)."),
    ] = None,
    pool: Annotated[
        str,
        typer.Option(help="unannotated (no annotation in the task) | no-gold (no gold label)"),
    ] = "unannotated",
    seed: Annotated[int, typer.Option(help="Random seed (ties, random start).")] = 0,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the worklist CSV here.")
    ] = None,
    embeddings_dir: Annotated[
        Path | None,
        typer.Option("--embeddings-dir", help="Embedding files (default: beside a SQLite DB)."),
    ] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank a dataset's unlabeled images for labeling (active learning) and export the
    worklist as CSV (exit 0: a worklist is not a check)."""
    from rich.table import Table
    from sqlalchemy.orm import Session

    from quality.db.queries import resolve_dataset
    from quality.models import POOLS, STRATEGIES, build_worklist, resolve_model_version

    if strategy not in STRATEGIES:
        raise _fail(f"--strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    pool_name = pool.strip().replace("-", "_")
    if pool_name not in POOLS:
        raise _fail(f"--pool must be unannotated or no-gold, not {pool!r}")
    engine = _engine(db)
    if embeddings_dir is None and engine.url.get_backend_name() == "sqlite" and engine.url.database:
        embeddings_dir = Path(engine.url.database).parent / "embeddings"
    try:
        with Session(engine) as session:
            worklist = build_worklist(
                session,
                resolve_dataset(session, dataset),
                resolve_model_version(session, model_version),
                strategy=strategy,  # type: ignore[arg-type]
                budget=budget,
                task_id=_resolve_task(session, task) if task is not None else None,
                pool=pool_name,  # type: ignore[arg-type]
                embeddings_dir=embeddings_dir,
                seed=seed,
            )
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    if out_file is not None:
        out_file.write_text(worklist.to_csv(), encoding="utf-8")
    payload = worklist.as_dict() | {"out": str(out_file) if out_file else None}

    def human() -> None:
        v = worklist.model_version
        out.print(
            f"{worklist.strategy} worklist of task {worklist.task_name!r} by {v.model} "
            f"{v.version}: {len(worklist.items):,} of {worklist.n_ranked:,} rankable "
            f"({worklist.n_pool:,} in the {worklist.pool} pool)",
            highlight=False,
        )
        if worklist.n_pool == 0:
            other = "no-gold" if worklist.pool == "unannotated" else "unannotated"
            out.print(f"every image of the dataset is labelled in this pool; try --pool {other}")
            return
        table = Table("rank", "image", "source", "split", "score", "label", "priority")
        for rec in worklist.items.head(20).to_dict("records"):
            score = "" if rec["score"] != rec["score"] else f"{rec['score']:.3f}"
            table.add_row(
                str(rec["rank"]), str(rec["image_id"]), str(rec["source"]), str(rec["split"]),
                score, str(rec["predicted_label"] or ""), f"{rec['priority']:.3f}",
            )  # fmt: skip
        out.print(table)
        mix = worklist.class_mix
        expected = mix[mix["kind"] == "expected"]
        out.print(
            "expected class mix: "
            + ", ".join(
                f"{c} {n:.1f}" for c, n in zip(expected["class"], expected["n"], strict=True)
            ),
            highlight=False,
        )
        if out_file is not None:
            err.print(f"wrote {out_file}", highlight=False)

    _emit(payload, as_json, human)


# --- users ---
users_app = typer.Typer(
    help="Users of the app: add, change a password, disable, enable, list.",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")

PasswordStdinOpt = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from the first line of stdin (scripts); else prompt twice.",
    ),
]


def _cli_actor() -> str:
    """Who runs the command, for the audit log: ``cli:<os user>``."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name (a container without /etc/passwd entry)
        return f"cli:uid{os.getuid()}" if hasattr(os, "getuid") else "cli:unknown"


def _new_password(password_stdin: bool) -> str:
    """The new password: one line of stdin, or typed twice without echo. Never an argument
    (it would be in the shell history and the process list)."""
    import getpass

    if password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
        if not password:
            raise _fail("--password-stdin: stdin held no password")
        return password
    try:
        first = getpass.getpass("New password: ")
        second = getpass.getpass("Repeat it: ")
    except (EOFError, KeyboardInterrupt) as exc:
        raise _fail("no password entered") from exc
    if first != second:
        raise _fail("the two passwords differ; nothing was changed")
    return first


def _role_option(role: str) -> str:
    # "labeling-manager" and "labeling_manager" are easier to type than a quoted space.
    return role.strip().lower().replace("_", " ").replace("-", " ")


def _users_write(db: str | None, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    from sqlalchemy.exc import SQLAlchemyError

    from quality.db.session import session_scope

    engine = _engine(db)
    try:
        with session_scope(engine) as session:
            return fn(session, *args, actor=_cli_actor(), **kwargs)
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    except SQLAlchemyError as exc:  # a DB without the users table, say; the class is enough
        raise _fail(f"cannot write users: {type(exc).__name__}; run `quality db upgrade`") from exc
    finally:
        engine.dispose()


@users_app.command("add")
def users_add(
    username: Annotated[str, typer.Argument(help="Sign-in name (an e-mail address for OIDC).")],
    role: Annotated[
        str, typer.Option("--role", help="admin | labeling manager | data scientist | clinician")
    ],
    display_name: Annotated[
        str | None, typer.Option("--display-name", help="Name shown in the app.")
    ] = None,
    password_stdin: PasswordStdinOpt = False,
    no_password: Annotated[
        bool,
        typer.Option("--no-password", help="No password: the user signs in through OIDC only."),
    ] = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a user with a role and a password (prompted twice, or --password-stdin)."""
    from quality.auth import ROLES, add_user

    role_name = _role_option(role)
    if role_name not in ROLES:
        raise _fail(f"--role must be one of {', '.join(ROLES)}, not {role!r}")
    if no_password and password_stdin:
        raise _fail("--no-password and --password-stdin exclude each other")
    password = None if no_password else _new_password(password_stdin)
    user = _users_write(db, add_user, username, role_name, password, display_name=display_name)
    _emit(
        {"id": user.id, "username": user.username, "role": user.role, "added": True},
        as_json,
        lambda: out.print(f"added {user.username!r} as {user.role}", highlight=False),
    )


@users_app.command("passwd")
def users_passwd(
    username: Annotated[str, typer.Argument(help="The user whose password changes.")],
    password_stdin: PasswordStdinOpt = False,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a new password for a user (prompted twice, or --password-stdin)."""
    from quality.auth import set_password

    password = _new_password(password_stdin)
    _users_write(db, set_password, username, password)
    _emit(
        {"username": username.strip(), "password_changed": True},
        as_json,
        lambda: out.print(f"password of {username.strip()!r} changed", highlight=False),
    )


def _set_active(username: str, active: bool, db: str | None, as_json: bool) -> None:
    from quality.auth import set_active

    _users_write(db, set_active, username, active)
    state = "enabled" if active else "disabled"
    _emit(
        {"username": username.strip(), "is_active": active},
        as_json,
        lambda: out.print(f"{username.strip()!r} {state}", highlight=False),
    )


@users_app.command("disable")
def users_disable(
    username: Annotated[str, typer.Argument(help="The user to disable.")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Disable a user: no more sign-ins, and open sessions end at their next page run."""
    _set_active(username, False, db, as_json)


@users_app.command("enable")
def users_enable(
    username: Annotated[str, typer.Argument(help="The user to enable again.")],
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Enable a disabled user again."""
    _set_active(username, True, db, as_json)


@users_app.command("list")
def users_list(db: DbOpt = None, as_json: JsonOpt = False) -> None:
    """List the users with role and state (never a password hash)."""
    from rich.table import Table
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.orm import Session

    from quality.auth import list_users

    engine = _engine(db)
    try:
        with Session(engine) as session:
            users = list_users(session)
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    except SQLAlchemyError as exc:  # a DB without the users table, say
        raise _fail(f"cannot read users: {type(exc).__name__}; run `quality db upgrade`") from exc
    finally:
        engine.dispose()
    records = [
        {k: (None if v is None or v != v else v) for k, v in rec.items()}
        for rec in users.astype(object).to_dict("records")
    ]

    def human() -> None:
        table = Table("username", "display name", "role", "active", "password", "created")
        for rec in records:
            table.add_row(
                str(rec["username"]), str(rec["display_name"] or ""), str(rec["role"]),
                "yes" if rec["is_active"] else "no", "yes" if rec["has_password"] else "no",
                str(rec["created_at"] or "")[:19],
            )  # fmt: skip
        out.print(table)

    _emit({"users": records}, as_json, human)


# --- phi-audit ---


def _phi_human(report: Any) -> None:
    from rich.table import Table

    out.print(
        f"PHI audit of {report.scope}: {report.n_audited:,} of {report.n_images:,} images read, "
        f"{report.n_flagged:,} with identifying data",
        highlight=False,
    )
    if report.attributes:
        table = Table("attribute", "tag", "action", "images", "e.g. SOP Instance UID")
        for kw, rec in report.attributes.items():
            ex = rec["examples"][0] if rec["examples"] else ""
            table.add_row(kw, rec["tag"], rec["action"], f"{rec['n_images']:,}", ex)
        out.print(table)
    if report.private.get("n_images"):
        out.print(
            f"private tags: {report.private['n_tags']:,} in {report.private['n_images']:,} "
            "images (PS3.15: remove)",
            highlight=False,
        )
    yes, unknown = report.burned_in["yes"], report.burned_in["unknown"]
    if yes["n_images"]:
        out.print(f"[red]BurnedInAnnotation = YES[/] on {yes['n_images']:,} images")
    if unknown["n_images"]:
        out.print(
            f"burned-in annotation unknown (US/SC/XA/ES without the attribute) on "
            f"{unknown['n_images']:,} images: check the pixels",
            highlight=False,
        )
    if report.uids:
        out.print(
            "original UIDs (information): "
            + ", ".join(f"{k} {v:,}" for k, v in report.uids.items()),
            highlight=False,
        )
    for e in report.errors[:20]:
        who = e.get("sop_uid") or e.get("key")
        err.print(f"unreadable: {who}: {e['kind']}: {e['message']}", highlight=False)
    out.print("[green]clean[/]" if report.passed else "[red]identifying data found[/]")


@app.command("phi-audit")
def phi_audit_cmd(
    dataset: Annotated[
        str | None, typer.Argument(help="Dataset name or id (its newest version).")
    ] = None,
    store: Annotated[
        str | None,
        typer.Option("--store", help="Audit a folder / s3:// / DICOMweb store instead."),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Audit the first N images.")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """De-identification audit (DICOM PS3.15 Basic profile): which headers still carry
    identifying attributes, private tags or burned-in annotation. Never prints a value;
    exit 1 when something is found."""
    from sqlalchemy.orm import Session

    from quality.phi import phi_audit, phi_audit_store

    if (dataset is None) == (store is None):
        raise _fail("give a DATASET or --store URI (one of them)")
    try:
        with _progress(not as_json) as update:
            if store is not None:
                report = phi_audit_store(store, limit=limit, progress=update)
            else:
                engine = _engine(db)
                try:
                    with Session(engine) as session:
                        report = phi_audit(session, dataset, limit=limit, progress=update)
                finally:
                    engine.dispose()
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    _emit(report.as_dict(), as_json, lambda: _phi_human(report))
    raise typer.Exit(0 if report.passed else 1)


@app.command("deidentify")
def deidentify_cmd(
    src: Annotated[Path, typer.Argument(help="Folder of DICOM files (read only).")],
    dst: Annotated[Path, typer.Argument(help="New (or empty) folder for the cleaned copy.")],
    as_json: JsonOpt = False,
) -> None:
    """Write a de-identified copy of a folder (PS3.15 Basic profile, keeping full dates and
    patient characteristics; UIDs replaced consistently with QUALITY_PHI_SALT). Exit 1 when
    a file could not be read (it is left out of the copy)."""
    from quality.phi import deidentify_folder

    settings = get_settings()
    try:
        with _progress(not as_json) as update:
            summary = deidentify_folder(src, dst, salt=settings.phi_salt, progress=update)
    except QualityError as exc:
        raise _fail(str(exc)) from exc
    payload = summary.as_dict()

    def human() -> None:
        out.print(
            f"wrote {summary.n_written:,} of {summary.n_files:,} files to {summary.dst}",
            highlight=False,
        )
        for rec in summary.skipped:
            err.print(f"skipped {rec['key']}: {rec['kind']}: {rec['message']}", highlight=False)

    _emit(payload, as_json, human)
    raise typer.Exit(1 if summary.skipped else 0)


@app.command("app")
def run_app(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8501,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start the Streamlit workbench on 127.0.0.1."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    if db:
        env["QUALITY_DB_URL"] = db
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(root / "app.py"),
        "--server.address", "127.0.0.1", "--server.port", str(port),
        "--browser.gatherUsageStats", "false", "--server.headless", "true",
    ]  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps({"url": f"http://127.0.0.1:{port}", "cmd": cmd}) + "\n")
    raise typer.Exit(subprocess.call(cmd, cwd=root, env=env))


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
