"""Domain errors. Each names the file, row or field at fault, never patient data."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DatabaseUnavailableError",
    "DicomReadError",
    "EmptyDatabaseError",
    "LabelDataError",
    "ModelWeightsError",
    "QualityError",
    "ScoreInputError",
    "StoreError",
    "TrainingDataError",
]


class QualityError(Exception):
    """Base class of the workbench's own errors."""


class DicomReadError(QualityError, ValueError):
    """A DICOM file that cannot be read or decoded.

    Parameters
    ----------
    uri : the file (store URI) at fault.
    kind : a short machine-readable kind (``not_dicom``, ``truncated``, ``no_pixels``, ...).
    message : what is wrong, in plain words.
    """

    def __init__(self, uri: str, kind: str, message: str) -> None:
        self.uri = uri
        self.kind = kind
        self.message = message
        super().__init__(f"{uri}: {kind}: {message}")


class StoreError(QualityError, ValueError):
    """An image store URI that cannot be opened, listed or read."""

    def __init__(self, uri: str, message: str) -> None:
        self.uri = uri
        super().__init__(f"{uri}: {message}")


class DatabaseUnavailableError(QualityError, RuntimeError):
    """The annotation DB cannot be reached or queried (URL shown without password)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"database {url} is not reachable: {reason}")


class EmptyDatabaseError(QualityError, RuntimeError):
    """The DB is reachable but has no schema or no data yet."""

    def __init__(self, url: str, hint: str = "run `quality demo` or `quality ingest URI`") -> None:
        self.url = url
        super().__init__(f"database {url} has no data yet: {hint}")


class LabelDataError(QualityError, ValueError):
    """Label or mask input that an agreement statistic cannot use.

    Parameters
    ----------
    source : what the input is (a frame name, a task, a file).
    field : the column or field at fault.
    message : what is wrong, naming the row where there is one.
    """

    def __init__(self, source: str, field: str, message: str) -> None:
        self.source = source
        self.field = field
        super().__init__(f"{source}: {field}: {message}" if field else f"{source}: {message}")


class ModelWeightsError(QualityError, RuntimeError):
    """The IQA weights file is missing, unreadable or does not fit :class:`IQANet`."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class ScoreInputError(QualityError, ValueError):
    """Bad input to scoring: an unknown dataset, or a Dask scheduler that cannot be reached."""


class TrainingDataError(QualityError, ValueError):
    """The training data cannot be read (truth file, DICOMs) or is too small."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = str(path)
        super().__init__(f"{path}: {message}")


class RulesError(QualityError, ValueError):
    """A data-test rules file (YAML) that cannot be used: names the file, line and field."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, message: str) -> None:
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = f"{path}" + (f", line {line}" if line is not None else "")
        what = f" (field {field!r})" if field else ""
        super().__init__(f"{where}{what}: {message}")


class DatasetNotFoundError(QualityError, ValueError):
    """A dataset name (or id) the DB does not know; lists the known names."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name, self.known = name, known
        listed = ", ".join(known) if known else "none; run `quality demo` or create one"
        super().__init__(f"unknown dataset {name!r}; known datasets: {listed}")
