"""Analysts' data-test rules: a YAML format for non-programmers, parsed with line numbers.

An analyst writes what the data must look like in plain terms; :mod:`quality.checks`
turns each rule into SQL over the images of a dataset version. This module only reads and
validates rules files; it never touches a database.

Which function for which need
-----------------------------
* :func:`load_rules` - a rules file on disk.
* :func:`parse_rules` - rules text from elsewhere (an upload, a text box).
* :data:`COLUMNS` / :func:`column_spec` - the columns a rule may name (the whitelist), and
  :func:`column_expression` - the SQL expression behind each (for :mod:`quality.checks`).

The format
----------
.. code-block:: yaml

    rules:
      - name: kVp in range for CR           # optional; a name is made up otherwise
        column: kvp
        between: [40, 150]
        where: {modality: CR}               # optional filter: column -> value or [values]
        severity: error                     # optional: error (default) or warning
      - name: at least two readers per image
        annotations_per_image: {task: finding, at_least: 2}
      - name: few MONOCHROME1 images per source
        share: {column: photometric, value: MONOCHROME1, at_most: 0.05, per: source}
      - column: body_part
        in: [CHEST]

A rule has exactly one check (the bounds ``greater_than``/``at_least`` and
``less_than``/``at_most`` may be combined, one of each):

=========================  ===================================================  ==========
check                      fails for                                            columns
=========================  ===================================================  ==========
``between: [lo, hi]``      a value below ``lo`` or above ``hi`` (inclusive)     num, date
``in: [a, b, ...]``        a value not in the list                              any
``not_null: true``         a missing value (NULL, or an empty text)             any
``unique: true``           a value that two or more images share                any
``greater_than: x``        a value ``<= x``                                     num, date
``at_least: x``            a value ``< x``                                      num, date
``less_than: x``           a value ``>= x``                                     num, date
``at_most: x``             a value ``> x``                                      num, date
``matches: 'regex'``       a value the regular expression does not match whole  text
``max_missing_share: s``   the share of missing values above ``s`` (0 to 1)     any
``share: {...}``           a group where the share of ``value`` in ``column``   any
                           is above ``at_most`` / below ``at_least``; groups
                           by ``per`` (a column), else the whole version
``annotations_per_image``  an image with fewer than ``at_least`` (more than     (none)
``: {task, at_least,       ``at_most``) different annotators in ``task``
at_most}``
=========================  ===================================================  ==========

Value checks (``between``, ``in``, the bounds, ``matches``) judge only present values;
write a ``not_null`` rule for missing ones. Text values are read exactly as written in the
file (``NO`` stays the text ``NO``, not a YAML boolean), numbers as numbers, dates as
``YYYY-MM-DD``.

Errors
------
Every problem raises :class:`~quality.errors.RulesError` naming the file, the 1-based line
and the field: YAML syntax errors (at the parser's mark), unknown or repeated keys, wrong
types, an unknown column (the message lists the valid ones), a ``between`` that is not two
numbers in order, a regular expression that does not compile, and so on. An unknown task is
found when the rules run (:mod:`quality.checks`), with the line of its ``task`` field.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from sqlalchemy import ColumnElement
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from quality.db.schema import DatasetItem, Image, Series, Source, Study
from quality.errors import RulesError

__all__ = [
    "CHECK_KEYS",
    "COLUMNS",
    "HEADER_PREFIX",
    "RULE_KEYS",
    "ColumnKind",
    "ColumnSpec",
    "Rule",
    "RuleKind",
    "RuleSet",
    "Severity",
    "column_expression",
    "column_spec",
    "load_rules",
    "parse_rules",
]

ColumnKind = Literal["num", "text", "date"]
Severity = Literal["error", "warning"]
RuleKind = Literal[
    "between",
    "in",
    "not_null",
    "unique",
    "compare",
    "matches",
    "max_missing_share",
    "share",
    "annotations_per_image",
]
SEVERITIES: tuple[str, ...] = ("error", "warning")
HEADER_PREFIX = "header."
"""``header.<DICOM keyword>`` names a (text) value of the stored, PHI-free DICOM header."""


@dataclass(frozen=True)
class ColumnSpec:
    """One column a rule may name.

    Attributes
    ----------
    name : the name analysts write.
    kind : ``num``, ``text`` or ``date`` (decides which checks apply).
    table : where it lives: ``image``, ``series``, ``study``, ``source``, ``item`` (the
        dataset item: the split) or ``header``.
    description : what it is, in plain words.
    """

    name: str
    kind: ColumnKind
    table: str
    description: str


def _spec(name: str, kind: ColumnKind, table: str, description: str) -> tuple[str, ColumnSpec]:
    return name, ColumnSpec(name, kind, table, description)


COLUMNS: dict[str, ColumnSpec] = dict(
    [
        _spec("sop_uid", "text", "image", "SOP Instance UID of the image"),
        _spec("uri", "text", "image", "where the file is in the image store"),
        _spec("pixel_sha256", "text", "image", "sha256 of the stored pixel bytes"),
        _spec("rows", "num", "image", "image height in pixels"),
        _spec("cols", "num", "image", "image width in pixels"),
        _spec("n_frames", "num", "image", "number of frames"),
        _spec("bits_stored", "num", "image", "bits stored per pixel"),
        _spec("photometric", "text", "image", "PhotometricInterpretation (MONOCHROME1, ...)"),
        _spec("spacing_row", "num", "image", "pixel spacing between rows, mm"),
        _spec("spacing_col", "num", "image", "pixel spacing between columns, mm"),
        _spec("file_size", "num", "image", "file size in bytes"),
        _spec("transfer_syntax", "text", "image", "Transfer Syntax UID"),
        _spec("sop_class_uid", "text", "image", "SOP Class UID"),
        _spec("instance_number", "num", "image", "InstanceNumber"),
        _spec("series_uid", "text", "series", "Series Instance UID"),
        _spec("series_number", "num", "series", "SeriesNumber"),
        _spec("series_modality", "text", "series", "Modality of the series"),
        _spec("series_body_part", "text", "series", "BodyPartExamined of the series"),
        _spec("manufacturer", "text", "series", "device manufacturer"),
        _spec("model", "text", "series", "device model name"),
        _spec("kvp", "num", "series", "peak kilovoltage (KVP)"),
        _spec("study_uid", "text", "study", "Study Instance UID"),
        _spec("patient_key", "text", "study", "pseudonymous patient key (never PHI)"),
        _spec("modality", "text", "study", "Modality of the study (CR, DX, CT, ...)"),
        _spec("body_part", "text", "study", "BodyPartExamined of the study"),
        _spec("study_date", "date", "study", "StudyDate"),
        _spec("patient_age", "num", "study", "patient age at the study, whole years"),
        _spec("patient_sex", "text", "study", "patient sex (M, F, O)"),
        _spec("source", "text", "source", "the sending site (hospital, device site)"),
        _spec("split", "text", "item", "train, val or test in the dataset version"),
    ]
)
"""The whitelist of rule columns, by name."""

_EXPRESSIONS: dict[str, Any] = {
    "sop_uid": Image.sop_uid,
    "uri": Image.uri,
    "pixel_sha256": Image.pixel_sha256,
    "rows": Image.rows,
    "cols": Image.cols,
    "n_frames": Image.n_frames,
    "bits_stored": Image.bits_stored,
    "photometric": Image.photometric,
    "spacing_row": Image.spacing_row,
    "spacing_col": Image.spacing_col,
    "file_size": Image.file_size,
    "transfer_syntax": Image.transfer_syntax,
    "sop_class_uid": Image.sop_class_uid,
    "instance_number": Image.instance_number,
    "series_uid": Series.series_uid,
    "series_number": Series.series_number,
    "series_modality": Series.modality,
    "series_body_part": Series.body_part,
    "manufacturer": Series.manufacturer,
    "model": Series.model,
    "kvp": Series.kvp,
    "study_uid": Study.study_uid,
    "patient_key": Study.patient_key,
    "modality": Study.modality,
    "body_part": Study.body_part,
    "study_date": Study.study_date,
    "patient_age": Study.patient_age_years,
    "patient_sex": Study.patient_sex,
    "source": Source.name,
    "split": DatasetItem.split,
}

_KEYWORD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")

COMPARE_KEYS: dict[str, str] = {
    "greater_than": ">",
    "at_least": ">=",
    "less_than": "<",
    "at_most": "<=",
}
CHECK_KEYS: tuple[str, ...] = (
    "between",
    "in",
    "not_null",
    "unique",
    *COMPARE_KEYS,
    "matches",
    "max_missing_share",
    "share",
    "annotations_per_image",
)
"""Keys that make a rule's check (exactly one per rule; one lower and one upper bound may
be combined)."""
RULE_KEYS: tuple[str, ...] = ("name", "description", "severity", "column", "where", *CHECK_KEYS)
TOP_KEYS: tuple[str, ...] = ("rules", "version", "dataset", "description")
_SHARE_KEYS = ("column", "value", "at_most", "at_least", "per")
_APP_KEYS = ("task", "at_least", "at_most")
_NEEDS_ORDER = ("between", *COMPARE_KEYS)


def column_spec(name: str) -> ColumnSpec | None:
    """The :class:`ColumnSpec` of ``name`` (``header.<Keyword>`` included), or None."""
    if name in COLUMNS:
        return COLUMNS[name]
    if name.startswith(HEADER_PREFIX) and _KEYWORD_RE.match(name[len(HEADER_PREFIX) :]):
        return ColumnSpec(name, "text", "header", f"DICOM header value {name[7:]} (as text)")
    return None


def column_expression(name: str) -> ColumnElement[Any]:
    """The SQL expression of a rule column, over ``images ⋈ series ⋈ studies ⋈ sources``
    and the version's ``dataset_items`` (see :mod:`quality.checks`).

    Raises
    ------
    KeyError
        ``name`` is not a rule column (rules are validated before they get here).
    """
    if name in _EXPRESSIONS:
        return _EXPRESSIONS[name]
    spec = column_spec(name)
    if spec is None:
        raise KeyError(name)
    return Image.header[name[len(HEADER_PREFIX) :]].as_string()


@dataclass(frozen=True)
class Rule:
    """One validated rule.

    Attributes
    ----------
    name : unique within the file (made up from the check when the file gives none).
    kind : the check (see the module table; the four bounds are ``compare``).
    column : the column judged (``share`` keeps its own in ``params``); None for
        ``annotations_per_image``.
    params : the check's values, normalised: ``between`` → ``{"low", "high"}``; ``in`` →
        ``{"values"}``; ``compare`` → ``{"greater_than": x, ...}``; ``matches`` →
        ``{"pattern"}``; ``max_missing_share`` → ``{"share"}``; ``share`` → ``{"column",
        "value", "at_most", "at_least", "per"}``; ``annotations_per_image`` → ``{"task",
        "at_least", "at_most"}``.
    where : filters as ``((column, (value, ...)), ...)``: every filter must hold.
    severity : ``error`` or ``warning``.
    line : 1-based line where the rule starts.
    lines : 1-based line of each field of the rule (``"task"`` too), for errors found
        when the rule runs.
    description : free text, or None.
    """

    name: str
    kind: RuleKind
    column: str | None
    params: Mapping[str, Any]
    where: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    severity: Severity = "error"
    line: int = 1
    lines: Mapping[str, int] = field(default_factory=dict)
    description: str | None = None


@dataclass(frozen=True)
class RuleSet:
    """A parsed rules file.

    Attributes
    ----------
    path : the file (or a label such as ``<pasted rules>``), for messages.
    rules : the rules, in file order.
    sha256 : sha256 of the file's text (UTF-8), stored with every check run.
    dataset : the optional top-level ``dataset`` name (informational).
    """

    path: str
    rules: tuple[Rule, ...]
    sha256: str
    dataset: str | None = None

    def __len__(self) -> int:
        return len(self.rules)


# --------------------------------------------------------------------------- parsing


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Parser:
    """Walks the composed YAML nodes, so that every error carries a line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._constructor = SafeConstructor()

    def fail(self, node: Node | None, field_name: str | None, message: str) -> RulesError:
        return RulesError(self.path, None if node is None else _line(node), field_name, message)

    def mapping(
        self, node: Node, what: str, field_name: str | None
    ) -> list[tuple[str, Node, Node]]:
        """``(key, key_node, value_node)`` of a mapping node; keys must be unique texts."""
        if not isinstance(node, MappingNode):
            raise self.fail(node, field_name, f"{what} must be a mapping (key: value lines)")
        seen: dict[str, int] = {}
        out = []
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                raise self.fail(key_node, field_name, f"keys of {what} must be plain words")
            key = str(key_node.value)
            if key in seen:
                raise self.fail(
                    key_node, key, f"{key!r} is given twice in {what} (first on line {seen[key]})"
                )
            seen[key] = _line(key_node)
            out.append((key, key_node, value_node))
        return out

    def value(self, node: Node, field_name: str) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except ConstructorError as exc:
            raise self.fail(node, field_name, f"cannot read the value: {exc.problem}") from exc

    def text(self, node: Node, field_name: str) -> str:
        if not isinstance(node, ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            raise self.fail(node, field_name, f"{field_name} must be a text")
        text = str(node.value).strip()
        if not text:
            raise self.fail(node, field_name, f"{field_name} must not be empty")
        return text

    def number(self, node: Node, field_name: str) -> float:
        value = self.value(node, field_name) if isinstance(node, ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(node, field_name, f"{field_name} must be a number, not {_shown(node)}")
        if not math.isfinite(float(value)):
            raise self.fail(node, field_name, f"{field_name} must be a finite number")
        return value

    def share(self, node: Node, field_name: str) -> float:
        value = self.number(node, field_name)
        if not 0 <= value <= 1:
            raise self.fail(
                node, field_name, f"{field_name} is a share: between 0 and 1, not {value}"
            )
        return float(value)

    def count(self, node: Node, field_name: str) -> int:
        value = self.number(node, field_name)
        if value != int(value) or value < 0:
            raise self.fail(node, field_name, f"{field_name} must be a whole number >= 0")
        return int(value)

    def true(self, node: Node, field_name: str) -> None:
        if self.value(node, field_name) is not True:
            raise self.fail(node, field_name, f"write `{field_name}: true` (nothing else)")

    def column(self, node: Node, field_name: str) -> ColumnSpec:
        name = self.text(node, field_name)
        spec = column_spec(name)
        if spec is None:
            valid = ", ".join(COLUMNS)
            raise self.fail(
                node,
                field_name,
                f"unknown column {name!r}; valid columns: {valid}, or header.<DICOM keyword>",
            )
        return spec

    def typed(self, node: Node, spec: ColumnSpec, field_name: str) -> Any:
        """One value for column ``spec``: raw text for text columns (no YAML booleans),
        a number or a date otherwise."""
        if not isinstance(node, ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            raise self.fail(
                node, field_name, f"{field_name} needs a value (use not_null for missing ones)"
            )
        if spec.kind == "text":
            return str(node.value)
        if spec.kind == "num":
            return self.number(node, field_name)
        value = self.value(node, field_name)
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(str(value))
        except ValueError:
            raise self.fail(
                node, field_name, f"{spec.name} is a date: write YYYY-MM-DD, not {_shown(node)}"
            ) from None

    def values(self, node: Node, spec: ColumnSpec, field_name: str) -> tuple[Any, ...]:
        if not isinstance(node, SequenceNode):
            raise self.fail(node, field_name, f"{field_name} must be a list, e.g. [a, b]")
        if not node.value:
            raise self.fail(node, field_name, f"{field_name} must list at least one value")
        return tuple(self.typed(item, spec, field_name) for item in node.value)


def _shown(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return repr(node.value)
    if isinstance(node, SequenceNode):
        n = len(node.value)
        return f"a list of {n} value{'' if n == 1 else 's'}"
    return "a mapping"


def _ordered_kind(spec: ColumnSpec, node: Node, key: str, parser: _Parser) -> None:
    if spec.kind not in ("num", "date"):
        raise parser.fail(
            node, key, f"{key} needs a number or date column; {spec.name!r} is {spec.kind}"
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _default_name(kind: str, column: str | None, params: Mapping[str, Any], where: Any) -> str:
    if kind == "between":
        text = f"{column} between {_fmt(params['low'])} and {_fmt(params['high'])}"
    elif kind == "in":
        text = f"{column} in [{', '.join(_fmt(v) for v in params['values'])}]"
    elif kind == "compare":
        text = " and ".join(f"{column} {COMPARE_KEYS[k]} {_fmt(v)}" for k, v in params.items())
    elif kind == "matches":
        text = f"{column} matches {params['pattern']!r}"
    elif kind == "max_missing_share":
        text = f"{column} missing at most {_fmt(params['share'])}"
    elif kind == "share":
        bounds = [
            f"{b} {_fmt(params[b])}" for b in ("at_most", "at_least") if params[b] is not None
        ]
        per = f" per {params['per']}" if params["per"] else ""
        text = f"share of {params['column']} = {params['value']} {' and '.join(bounds)}{per}"
    elif kind == "annotations_per_image":
        bounds = [f"{b} {params[b]}" for b in ("at_least", "at_most") if params[b] is not None]
        text = f"annotators per image in {params['task']} {' and '.join(bounds)}"
    else:
        text = f"{column} {kind.replace('_', ' ')}"
    if where:
        text += " where " + ", ".join(f"{c} in [{', '.join(map(_fmt, v))}]" for c, v in where)
    return text


def _rule(node: Node, parser: _Parser, index: int) -> Rule:
    items = parser.mapping(node, f"rule {index + 1}", None)
    keys = {key: (key_node, value_node) for key, key_node, value_node in items}
    lines = {key: _line(value_node) for key, _, value_node in items}
    for key, key_node, _ in items:
        if key not in RULE_KEYS:
            raise parser.fail(
                key_node, key, f"unknown key {key!r} in a rule; valid keys: {', '.join(RULE_KEYS)}"
            )
    checks = [k for k in keys if k in CHECK_KEYS]
    compare = [k for k in checks if k in COMPARE_KEYS]
    others = [k for k in checks if k not in COMPARE_KEYS]
    if not checks:
        raise parser.fail(
            node, None, f"rule {index + 1} has no check; give one of: {', '.join(CHECK_KEYS)}"
        )
    if len(others) > 1 or (others and compare):
        second = (others + compare)[1]
        raise parser.fail(
            keys[second][0], second, f"a rule has one check; split {', '.join(others + compare)}"
        )
    lower = [k for k in compare if k in ("greater_than", "at_least")]
    upper = [k for k in compare if k in ("less_than", "at_most")]
    if len(lower) > 1 or len(upper) > 1:
        dup = (lower if len(lower) > 1 else upper)[1]
        raise parser.fail(keys[dup][0], dup, f"give only one lower and one upper bound, not {dup}")

    kind_key = others[0] if others else "compare"
    severity: Severity = "error"
    if "severity" in keys:
        sev = parser.text(keys["severity"][1], "severity")
        if sev not in SEVERITIES:
            raise parser.fail(keys["severity"][1], "severity", "severity must be error or warning")
        severity = sev  # type: ignore[assignment]

    spec: ColumnSpec | None = None
    if kind_key in ("share", "annotations_per_image"):
        if kind_key == "annotations_per_image" and "column" in keys:
            raise parser.fail(keys["column"][0], "column", "annotations_per_image takes no column")
        if kind_key == "share" and "column" in keys:
            spec = parser.column(keys["column"][1], "column")
    else:
        if "column" not in keys:
            raise parser.fail(node, "column", f"{kind_key} needs a column (column: NAME)")
        spec = parser.column(keys["column"][1], "column")

    if kind_key == "share":
        params = _share_params(keys["share"][1], spec, parser, lines)
        column = params["column"]
    elif kind_key == "annotations_per_image":
        params = _app_params(keys[kind_key][1], parser, lines)
        column = None
    elif spec is None:  # unreachable: every other check read its column above
        raise parser.fail(node, "column", f"{kind_key} needs a column (column: NAME)")
    else:
        params = _column_params(kind_key, compare, upper, spec, keys, parser)
        column = spec.name

    where = _where(keys["where"][1], parser) if "where" in keys else ()
    name = (
        parser.text(keys["name"][1], "name")
        if "name" in keys
        else _default_name(kind_key, column, params, where)
    )
    description = (
        parser.text(keys["description"][1], "description") if "description" in keys else None
    )
    return Rule(
        name=name,
        kind=kind_key,  # type: ignore[arg-type]
        column=column,
        params=params,
        where=where,
        severity=severity,
        line=_line(node),
        lines=lines,
        description=description,
    )


def _column_params(
    kind_key: str,
    compare: list[str],
    upper: list[str],
    spec: ColumnSpec,
    keys: dict[str, tuple[Node, Node]],
    parser: _Parser,
) -> dict[str, Any]:
    """The normalised parameters of a check on one column (see :attr:`Rule.params`)."""
    if kind_key == "compare":
        params: dict[str, Any] = {}
        for key in compare:
            value_node = keys[key][1]
            _ordered_kind(spec, value_node, key, parser)
            params[key] = parser.typed(value_node, spec, key)
        low = params.get("greater_than", params.get("at_least"))
        high = params.get("less_than", params.get("at_most"))
        if low is not None and high is not None and low > high:
            raise parser.fail(keys[upper[0]][1], upper[0], "the upper bound is below the lower one")
        return params
    value_node = keys[kind_key][1]
    if kind_key == "between":
        _ordered_kind(spec, value_node, "between", parser)
        if not isinstance(value_node, SequenceNode) or len(value_node.value) != 2:
            raise parser.fail(
                value_node,
                "between",
                f"between needs two values [low, high], not {_shown(value_node)}",
            )
        low, high = (parser.typed(v, spec, "between") for v in value_node.value)
        if low > high:
            raise parser.fail(value_node, "between", f"between [{low}, {high}]: low is above high")
        return {"low": low, "high": high}
    if kind_key == "in":
        return {"values": parser.values(value_node, spec, "in")}
    if kind_key in ("not_null", "unique"):
        parser.true(value_node, kind_key)
        return {}
    if kind_key == "matches":
        if spec.kind != "text":
            raise parser.fail(
                value_node, "matches", f"matches needs a text column; {spec.name!r} is {spec.kind}"
            )
        pattern = parser.text(value_node, "matches")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise parser.fail(
                value_node, "matches", f"not a valid regular expression: {exc}"
            ) from exc
        return {"pattern": pattern}
    return {"share": parser.share(value_node, "max_missing_share")}


def _share_params(
    node: Node, outer: ColumnSpec | None, parser: _Parser, lines: dict[str, int]
) -> dict[str, Any]:
    items = parser.mapping(node, "share", "share")
    keys = {key: (key_node, value_node) for key, key_node, value_node in items}
    for key, key_node, value_node in items:
        lines[f"share.{key}"] = _line(value_node)
        if key not in _SHARE_KEYS:
            raise parser.fail(
                key_node,
                f"share.{key}",
                f"unknown key {key!r} in share; valid: {', '.join(_SHARE_KEYS)}",
            )
    if "column" in keys and outer is not None:
        raise parser.fail(keys["column"][0], "share.column", "give the column once (inside share)")
    if "column" not in keys and outer is None:
        raise parser.fail(node, "share.column", "share needs a column")
    spec = parser.column(keys["column"][1], "share.column") if "column" in keys else outer
    if spec is None:  # unreachable: both absent raised above
        raise parser.fail(node, "share.column", "share needs a column")
    if "value" not in keys:
        raise parser.fail(node, "share.value", "share needs the value whose share is bounded")
    value = parser.typed(keys["value"][1], spec, "share.value")
    bounds = {
        b: parser.share(keys[b][1], f"share.{b}") if b in keys else None
        for b in ("at_most", "at_least")
    }
    if bounds["at_most"] is None and bounds["at_least"] is None:
        raise parser.fail(node, "share.at_most", "share needs at_most or at_least (a share 0-1)")
    per = parser.column(keys["per"][1], "share.per").name if "per" in keys else None
    return {"column": spec.name, "value": value, "per": per, **bounds}


def _app_params(node: Node, parser: _Parser, lines: dict[str, int]) -> dict[str, Any]:
    field_name = "annotations_per_image"
    items = parser.mapping(node, field_name, field_name)
    keys = {key: (key_node, value_node) for key, key_node, value_node in items}
    for key, key_node, value_node in items:
        lines[f"{field_name}.{key}"] = _line(value_node)
        if key not in _APP_KEYS:
            raise parser.fail(
                key_node,
                f"{field_name}.{key}",
                f"unknown key {key!r} in {field_name}; valid: {', '.join(_APP_KEYS)}",
            )
    if "task" not in keys:
        raise parser.fail(node, f"{field_name}.task", f"{field_name} needs a task (its name)")
    lines["task"] = _line(keys["task"][1])
    task = parser.text(keys["task"][1], f"{field_name}.task")
    bounds = {
        b: parser.count(keys[b][1], f"{field_name}.{b}") if b in keys else None
        for b in ("at_least", "at_most")
    }
    if bounds["at_least"] is None and bounds["at_most"] is None:
        raise parser.fail(node, f"{field_name}.at_least", f"{field_name} needs at_least or at_most")
    if (
        bounds["at_least"] is not None
        and bounds["at_most"] is not None
        and bounds["at_least"] > bounds["at_most"]
    ):
        raise parser.fail(keys["at_most"][1], f"{field_name}.at_most", "at_most is below at_least")
    return {"task": task, **bounds}


def _where(node: Node, parser: _Parser) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    out = []
    for key, key_node, value_node in parser.mapping(node, "where", "where"):
        spec = column_spec(key)
        if spec is None:
            raise parser.fail(
                key_node,
                f"where.{key}",
                f"unknown column {key!r}; valid columns: {', '.join(COLUMNS)}, or header.<DICOM keyword>",
            )
        if isinstance(value_node, SequenceNode):
            values = parser.values(value_node, spec, f"where.{key}")
        else:
            values = (parser.typed(value_node, spec, f"where.{key}"),)
        out.append((spec.name, values))
    return tuple(out)


def parse_rules(text: str, path: str | Path = "<rules>") -> RuleSet:
    """Parse and validate rules text.

    Parameters
    ----------
    text : the YAML text.
    path : the file name (or a label such as ``<uploaded rules.yaml>``) used in errors.

    Returns
    -------
    RuleSet

    Raises
    ------
    RulesError
        Anything wrong, with the 1-based line and the field (see the module docstring).

    Examples
    --------
    >>> rs = parse_rules("rules:\\n  - column: kvp\\n    between: [40, 150]\\n")
    >>> rs.rules[0].name, rs.rules[0].line
    ('kvp between 40 and 150', 2)
    >>> parse_rules("rules:\\n  - column: kvpp\\n    not_null: true\\n", "r.yaml")
    Traceback (most recent call last):
    ...
    quality.errors.RulesError: r.yaml, line 2 (field 'column'): unknown column 'kvpp'; ...
    """
    path = str(path)
    parser = _Parser(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else int(mark.line) + 1
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise RulesError(path, line, None, f"not valid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise RulesError(path, None, None, f"not valid YAML: {exc}") from exc
    if root is None:
        raise RulesError(path, 1, "rules", "the file is empty; it needs a `rules:` list")
    top = parser.mapping(root, "the file", None)
    keys = {key: (key_node, value_node) for key, key_node, value_node in top}
    for key, key_node, _ in top:
        if key not in TOP_KEYS:
            raise parser.fail(
                key_node, key, f"unknown top-level key {key!r}; valid keys: {', '.join(TOP_KEYS)}"
            )
    if "rules" not in keys:
        raise parser.fail(root, "rules", "the file needs a `rules:` list")
    if "version" in keys and parser.value(keys["version"][1], "version") != 1:
        raise parser.fail(keys["version"][1], "version", "only version 1 of the format exists")
    dataset = parser.text(keys["dataset"][1], "dataset") if "dataset" in keys else None
    rules_node = keys["rules"][1]
    if not isinstance(rules_node, SequenceNode):
        raise parser.fail(rules_node, "rules", "rules must be a list (lines starting with `- `)")
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for index, item in enumerate(rules_node.value):
        rule = _rule(item, parser, index)
        if rule.name in names:
            raise parser.fail(
                item,
                "name",
                f"two rules are named {rule.name!r} (the other on line {names[rule.name]})",
            )
        names[rule.name] = rule.line
        rules.append(rule)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return RuleSet(path=path, rules=tuple(rules), sha256=digest, dataset=dataset)


def load_rules(path: str | Path) -> RuleSet:
    """Read and validate a rules file (UTF-8 YAML); see :func:`parse_rules`.

    Raises
    ------
    RulesError
        The file cannot be read, or anything in it is wrong.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise RulesError(p, None, None, "file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(p, None, None, f"cannot read the file: {exc}") from exc
    return parse_rules(text, p)
