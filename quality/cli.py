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
    size: Annotated[str, typer.Option(help="small | medium")] = "small",
    workers: Annotated[int | None, typer.Option(help="Ingest processes (default: cores).")] = None,
    db: DbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate deterministic synthetic DICOMs, annotations and predictions, with seeded truth."""
    from quality.db.session import session_scope, upgrade
    from quality.demo import SIZES, build_demo

    if size not in SIZES:
        raise _fail(f"--size must be one of {', '.join(SIZES)}, not {size!r}")
    settings = get_settings(db_url=db)
    if db is None and "QUALITY_DB_URL" not in os.environ:
        settings.db_url = f"sqlite:///{out_dir / 'demo.db'}"
    engine = _engine(settings.db_url)
    try:
        upgrade(engine)
        with _progress(not as_json) as update, session_scope(engine) as session:
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
    uri: Annotated[str, typer.Argument(help="Image store: a folder (recursive).")],
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

# --- check (data tests) ---

# --- drift ---


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
