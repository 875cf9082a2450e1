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


class StoreUnavailableError(StoreError, RuntimeError):
    """A remote store that cannot be reached or keeps failing after retries.

    Not a defect of one file: ingest stops (what it committed stays) instead of writing an
    error row, and a rerun resumes.
    """


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


class VersionNotFoundError(QualityError, ValueError):
    """A dataset version the dataset does not have; lists the known versions."""

    def __init__(self, dataset: str, version: str, known: list[str]) -> None:
        self.dataset, self.version, self.known = dataset, version, known
        listed = ", ".join(known) if known else "none; run `quality dataset snapshot`"
        super().__init__(
            f"dataset {dataset!r} has no version {version!r}; known versions: {listed}"
        )


class CardFieldError(QualityError, ValueError):
    """A dataset-card free-text field that cannot be saved: names the field."""

    def __init__(self, dataset: str, field: str, message: str) -> None:
        self.dataset, self.field = dataset, field
        super().__init__(f"dataset {dataset!r}: card field {field!r}: {message}")


class SnapshotError(QualityError, ValueError):
    """A dataset snapshot that cannot be made (nothing to freeze, a concurrent snapshot)."""

    def __init__(self, dataset: str, message: str) -> None:
        self.dataset = dataset
        super().__init__(f"dataset {dataset!r}: cannot snapshot: {message}")


class SchemaOutdatedError(QualityError, RuntimeError):
    """The DB schema is older than the code: names the missing table or column."""

    def __init__(self, url: str, missing: str) -> None:
        self.url, self.missing = url, missing
        super().__init__(
            f"database {url} lacks {missing}: its schema is older than this version of the "
            f"workbench; run `quality db upgrade --db {url}`"
        )


__all__ += ["CardFieldError", "SchemaOutdatedError", "SnapshotError", "VersionNotFoundError"]


class DriftInputError(QualityError, ValueError):
    """Bad input to drift monitoring: names the field (a CLI option, a column) at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


__all__ += ["DriftInputError"]


class ReviewInputError(QualityError, ValueError):
    """Bad input to the spot-check (``quality.review``): names the field at fault, such as
    ``strategy``, ``corrected_bbox`` or ``--model-version``."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class ReviewWriteError(QualityError, RuntimeError):
    """A verdict (or review session) that could not be written: names the prediction and
    the reviewer, and the database's reason. Nothing was saved."""

    def __init__(self, what: str, reason: str) -> None:
        self.what, self.reason = what, reason
        super().__init__(f"{what} was not saved: {reason}")


__all__ += ["ReviewInputError", "ReviewWriteError"]


class ModelInputError(QualityError, ValueError):
    """Bad input to model comparison or active-learning ranking: names the field (a model
    version, a task, a CLI option) at fault and, where useful, the valid values."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


__all__ += ["ModelInputError"]


class AuthError(QualityError, ValueError):
    """A sign-in that is refused: wrong credentials, a disabled account, an unknown OIDC
    e-mail. The message is safe to show as is (it never says which of user name or password
    was wrong, and never holds the password)."""


class AuthInputError(QualityError, ValueError):
    """Bad input to user management (``quality.auth``): names the field at fault, such as
    ``username``, ``role`` or ``password`` (never the password itself)."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


class AuditInputError(QualityError, ValueError):
    """An audit-log row that cannot be written or a filter that cannot be used: names the
    field (``action``, ``details``, ``since``) at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


__all__ += ["AuditInputError", "AuthError", "AuthInputError"]


class PhiInputError(QualityError, ValueError):
    """Bad input to the PHI audit or de-identification (``quality.phi``): names the field
    (a CLI argument or option) at fault."""

    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


__all__ += ["PhiInputError"]


class PermissionDeniedError(QualityError, RuntimeError):
    """An action the session's role may not take (revealing PHI, say): names the action and
    the role. Nothing was shown or written."""

    def __init__(self, action: str, role: str | None) -> None:
        self.action, self.role = action, role
        super().__init__(f"the {role or 'signed-out'} role may not {action}")


__all__ += ["PermissionDeniedError"]
