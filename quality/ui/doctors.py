"""Sections of the Doctors and Agreement pages, and their cached report builders.

The builders (:func:`quality.doctors.build_doctor_report`,
:func:`quality.agreement.summary.build_agreement_summary`) bootstrap confidence intervals, so
their results are read through :func:`quality.db.aggregates.get` (computed ahead by the
writers while the labels are unchanged) and cached with
:func:`quality.ui.data.result_cache` for :data:`REPORT_TTL_S`, keyed by the DB URL and the
task id. The cached reports are shared: sections copy before they change a frame.

Every step that can find nothing to show stops the page with a plain message instead of a
traceback: a dataset without tasks, a task without annotations or with a single annotator
(:func:`task_picker`), and label data the statistics reject (:func:`analysis_guard`).
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Iterator, Mapping
from typing import Any

import pandas as pd
import streamlit as st

from quality import doctors as doctor_reports
from quality import phi
from quality.agreement import summary as agreement_summaries
from quality.config import get_settings
from quality.db import aggregates
from quality.errors import DatabaseUnavailableError, EmptyDatabaseError, QualityError
from quality.ui import charts, data, nav, thumbs, widgets

__all__ = [
    "CI_METRICS",
    "N_RESAMPLES",
    "REAL_NAME_ROLES",
    "REPORT_TTL_S",
    "agreement_downloads",
    "agreement_for_role",
    "agreement_heatmap",
    "agreement_metrics",
    "agreement_summary",
    "analysis_guard",
    "ci_text",
    "comparison",
    "disagreement_gallery",
    "doctor_disagreements",
    "doctor_drilldown",
    "doctor_picker",
    "doctor_report",
    "per_class_agreement",
    "report_downloads",
    "report_note",
    "task_picker",
    "team_ranking",
    "team_table",
]

REPORT_TTL_S = 300
N_RESAMPLES = aggregates.DEFAULT_RESAMPLES
"""Bootstrap resamples behind every CI on these pages."""
CI_METRICS = ("kappa", "sensitivity", "specificity", "f1")
"""Team-table metrics shown as ``estimate [low–high]``."""
_FLAG_BG = "background-color: rgba(255, 75, 75, 0.16)"
_GALLERY_COLS = 3
_ROW_PX = 35  # st.dataframe's row height: a table this tall shows every row, no scrolling


# --------------------------------------------------------------------------- builders


@data.result_cache(ttl=REPORT_TTL_S, show_spinner="Building the doctor report…")
def _doctor_report(url: str, task_id: int, n_resamples: int) -> doctor_reports.DoctorReport:
    # build_doctor_report, or its result computed ahead by the last writer.
    return data.run_query(url, aggregates.get, "doctor_report", task_id, n_resamples)


@data.result_cache(ttl=REPORT_TTL_S, show_spinner="Computing agreement…")
def _agreement_summary(
    url: str, task_id: int, n_resamples: int
) -> agreement_summaries.AgreementSummary:
    # build_agreement_summary, or its result computed ahead by the last writer.
    return data.run_query(url, aggregates.get, "agreement_summary", task_id, n_resamples)


def doctor_report(task_id: int) -> doctor_reports.DoctorReport:
    """:func:`quality.doctors.build_doctor_report` of ``task_id`` (cached)."""
    return _doctor_report(data.db_url(), int(task_id), N_RESAMPLES)


def agreement_summary(task_id: int) -> agreement_summaries.AgreementSummary:
    """:func:`quality.agreement.summary.build_agreement_summary` of ``task_id`` (cached)."""
    return _agreement_summary(data.db_url(), int(task_id), N_RESAMPLES)


REAL_NAME_ROLES: frozenset[str] = frozenset({"admin", "labeling manager"})
"""Roles that see annotators' real codes; the others see pseudonyms
(:func:`quality.phi.pseudonym`)."""


def agreement_for_role(
    summary: agreement_summaries.AgreementSummary,
) -> tuple[agreement_summaries.AgreementSummary, bool]:
    """The summary as the session's role may see it, and whether it was pseudonymised.

    Doctors' performance is personnel data: roles outside :data:`REAL_NAME_ROLES` (data
    scientists) get every annotator code replaced by a stable salted pseudonym
    (``Doctor-7f3a2b``), in tables, charts and downloads alike.
    """
    if nav.current_role() in REAL_NAME_ROLES:
        return summary, False
    return phi.pseudonymise_agreement(summary, get_settings().phi_salt), True


@contextlib.contextmanager
def analysis_guard() -> Iterator[None]:
    """Like :func:`quality.ui.data.db_guard`, and label data the statistics reject (a
    :class:`~quality.errors.QualityError` such as ``LabelDataError``) becomes a warning."""
    try:
        yield
    except EmptyDatabaseError as exc:
        data.show_empty(exc)
    except DatabaseUnavailableError as exc:
        data.show_unavailable(exc)
    except QualityError as exc:
        st.warning(f"This task's labels cannot be analysed: {exc}", icon="⚠️")
        st.stop()


# --------------------------------------------------------------------------- formatting


def _isnan(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def ci_text(value: Any, low: Any = None, high: Any = None, *, digits: int = 2) -> str:
    """``0.82 [0.75–0.88]``; the estimate alone without bounds; ``—`` when missing."""
    if _isnan(value):
        return "—"
    text = f"{float(value):.{digits}f}"
    if not _isnan(low) and not _isnan(high):
        text += f" [{float(low):.{digits}f}–{float(high):.{digits}f}]"
    return text


def _share(value: Any) -> str:
    return "—" if _isnan(value) else f"{float(value):.0%}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "task"


def _has(df: pd.DataFrame, col: str) -> bool:
    return col in df and bool(df[col].notna().any())


# --------------------------------------------------------------------------- task picker


def _task_label(rec: Mapping[str, Any], with_dataset: bool) -> str:
    text = (
        f"{rec['name']} · {rec['kind']} · {int(rec['n_annotations']):,} labels by "
        f"{int(rec['n_annotators'])} annotators"
    )
    return f"{rec['dataset']} / {text}" if with_dataset else text


def task_picker(dataset_id: int | None, *, key: str, min_annotators: int = 2) -> dict[str, Any]:
    """Pick one labeling task of the sidebar's dataset; stop with a message when there is none
    to analyse.

    Parameters
    ----------
    dataset_id : the sidebar's dataset (None: tasks of every dataset).
    key : widget key (one per page).
    min_annotators : below this, the task cannot be analysed and the page stops.

    Returns
    -------
    dict
        The task's row of :func:`quality.db.queries.list_tasks`.
    """
    tasks = data.list_tasks(dataset_id)
    if tasks.empty:
        scope = "This dataset has" if dataset_id is not None else "The database has"
        st.info(
            f"{scope} no labeling tasks yet, so there are no annotations to compare. Pick "
            "another dataset in the sidebar, or import annotations.",
            icon="🏷️",
        )
        st.stop()
    records = {int(r["id"]): r for r in tasks.to_dict("records")}
    ids = list(records)
    if st.session_state.get(key) not in ids:
        st.session_state[key] = ids[0]
    task_id = st.selectbox(
        "Labeling task",
        ids,
        key=key,
        format_func=lambda i: _task_label(records[i], dataset_id is None),
    )
    task = records[int(task_id)]
    if int(task["n_annotations"]) == 0:
        st.info(f"Task **{task['name']}** has no annotations yet.", icon="🏷️")
        st.stop()
    if int(task["n_annotators"]) < min_annotators:
        st.info(
            f"Task **{task['name']}** has labels from {int(task['n_annotators'])} annotator "
            f"only: agreement needs at least {min_annotators}.",
            icon="🏷️",
        )
        st.stop()
    return task


def report_note(n_dropped: int, positive: list[str] | None = None) -> None:
    """A caption on what the statistics rest on: the positive classes, and the annotation rows
    the cleaning left out (label missing or outside the task's classes, or a mask that could
    not be decoded)."""
    parts = []
    if positive:
        parts.append(f"Sensitivity and specificity count **{', '.join(positive)}** as positive.")
    if n_dropped:
        rows = "row was" if n_dropped == 1 else "rows were"
        parts.append(
            f"{n_dropped:,} annotation {rows} left out: label missing or outside the task's "
            "classes, or a mask that could not be decoded."
        )
    if parts:
        st.caption(" ".join(parts))


# --------------------------------------------------------------------------- team


def _team_display(team: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"rank": team["rank"], "code": team["code"]})
    # Flags up front: they are what a labeling manager scans the table for.
    out["flags"] = [
        "" if charts.flag_label(f) == charts.FLAG_OK else f"🚩 {f}" for f in team["flags"]
    ]
    out["kind"] = team["kind"]
    out["labels"] = team["n_annotations"]
    for m in CI_METRICS:
        if m in team:
            out[m] = [
                ci_text(v, lo, hi)
                for v, lo, hi in zip(
                    team[m],
                    team.get(f"{m}_low", pd.Series(None, index=team.index)),
                    team.get(f"{m}_high", pd.Series(None, index=team.index)),
                    strict=True,
                )
            ]
    for col in ("box_f1", "mean_iou", "dice"):
        if _has(team, col):
            out[col] = team[col]
    if _has(team, "gold_accuracy"):
        out["gold"] = [
            "—" if _isnan(a) else f"{a:.0%} of {int(n)}"
            for a, n in zip(team["gold_accuracy"], team["gold_n"].fillna(0), strict=True)
        ]
    if _has(team, "exam_accuracy"):
        out["exam"] = [
            "—" if _isnan(a) else f"{a:.0%} of {int(n)}"
            for a, n in zip(team["exam_accuracy"], team["exam_n"].fillna(0), strict=True)
        ]
    out["per_week"] = team["per_week"]
    out["median_s"] = team["median_duration_s"]
    out["too_fast"] = team["too_fast_share"]
    out["bias"] = [
        "—" if _isnan(b) or _isnan(c) else f"{b:+.0%} {c}"
        for b, c in zip(team["bias"], team["bias_class"], strict=True)
    ]
    return out.reset_index(drop=True)


def _highlight_flagged(row: pd.Series) -> list[str]:
    return [_FLAG_BG if row["flags"] else ""] * len(row)


def team_table(report: doctor_reports.DoctorReport) -> None:
    """The team, one row per annotator in rank order, flagged rows highlighted."""
    shown = _team_display(report.team.sort_values("rank"))
    formats = {c: "{:.2f}" for c in ("box_f1", "mean_iou", "dice", "per_week") if c in shown}
    formats |= {"median_s": "{:.0f} s", "too_fast": "{:.0%}"}
    # One format call: a second one with na_rep would reset the first one's columns.
    styled = shown.style.apply(_highlight_flagged, axis=1).format(formats, na_rep="—")
    ci = f"estimate [95% CI] against {report.reference}"
    st.dataframe(
        styled,
        hide_index=True,
        key="doctors_team",
        height=min(_ROW_PX * (len(shown) + 1) + 3, 720),
        column_config={
            "rank": st.column_config.NumberColumn("rank", width="small"),
            "code": st.column_config.TextColumn("doctor", width="small"),
            "kind": st.column_config.TextColumn("kind", width="small"),
            "labels": st.column_config.NumberColumn("labels", width="small"),
            "kappa": st.column_config.TextColumn("κ", help=f"Cohen's kappa, {ci}"),
            "sensitivity": st.column_config.TextColumn("sensitivity", help=ci),
            "specificity": st.column_config.TextColumn("specificity", help=ci),
            "f1": st.column_config.TextColumn("F1", help=ci),
            "box_f1": st.column_config.TextColumn("box F1", help="F1 at IoU 0.5"),
            "mean_iou": st.column_config.TextColumn("mean IoU"),
            "dice": st.column_config.TextColumn("Dice"),
            "gold": st.column_config.TextColumn("gold", help="accuracy on gold labels"),
            "exam": st.column_config.TextColumn("exam", help="accuracy on the exam set"),
            "per_week": st.column_config.TextColumn("per week", help="labels per active week"),
            "median_s": st.column_config.TextColumn("median time"),
            "too_fast": st.column_config.TextColumn(
                "too fast", help="share of labels faster than the team's usual pace"
            ),
            "bias": st.column_config.TextColumn(
                "bias", help="most over- (+) or under- (−) called class against consensus"
            ),
            "flags": st.column_config.TextColumn("flags", width=280),
        },
    )


def team_ranking(report: doctor_reports.DoctorReport) -> None:
    """Bars of kappa against the reference, with CIs, coloured by flag."""
    st.markdown(f"**Cohen's κ against {report.reference}, ranked (95% CI), coloured by flag**")
    st.plotly_chart(
        charts.kappa_ranking_chart(report.team),
        key="doctors_ranking",
        config={"displayModeBar": False},
    )


# --------------------------------------------------------------------------- one doctor


def _doctor_label(team: pd.DataFrame) -> dict[str, str]:
    out = {}
    for r in team.sort_values("rank").to_dict("records"):
        flag = "" if charts.flag_label(r["flags"]) == charts.FLAG_OK else f" · 🚩 {r['flags']}"
        out[str(r["code"])] = f"#{int(r['rank'])} {r['code']} ({r['kind']}){flag}"
    return out


def doctor_picker(
    report: doctor_reports.DoctorReport,
    *,
    key: str,
    label: str = "Doctor",
    default: int | None = None,
) -> str:
    """A select box of the team's codes in rank order; returns the chosen code.

    Parameters
    ----------
    default : position (in rank order) picked first; None picks the best-ranked flagged
        annotator, else the best-ranked one.
    """
    labels = _doctor_label(report.team)
    codes = list(labels)
    if st.session_state.get(key) not in codes:
        if default is None:
            ranked = report.team.sort_values("rank")
            flagged = ranked.loc[ranked["flags"].map(charts.flag_label) != charts.FLAG_OK]
            first = str(flagged["code"].iloc[0]) if not flagged.empty else codes[0]
        else:
            first = codes[min(max(default, 0), len(codes) - 1)]
        st.session_state[key] = first
    return str(st.selectbox(label, codes, key=key, format_func=labels.__getitem__))


@charts.memo_figure
def doctor_disagreements(
    report: doctor_reports.DoctorReport, code: str, n: int = 6
) -> pd.DataFrame:
    """The ``n`` worst items where ``code``'s label differs from consensus (worst first).

    Kept per report and doctor (:func:`quality.ui.charts.memo_figure`): a pass over every
    disagreement, on every rerun otherwise. Shared: callers copy before changing it.

    Returns
    -------
    DataFrame
        The rows of ``report.disagreements`` with ``their_label`` added.
    """
    dis = report.disagreements
    if dis.empty:
        return dis.assign(their_label=pd.Series(dtype=object))
    theirs = dis["labels"].map(lambda d: d.get(code) if isinstance(d, Mapping) else None)
    mask = theirs.notna() & (theirs.astype(str) != dis["consensus"].astype(str))
    return dis.loc[mask].assign(their_label=theirs[mask]).head(n).reset_index(drop=True)


def _boxes_by_item(labels: pd.DataFrame, item_ids: list[Any]) -> dict[Any, dict[str, Any]]:
    if labels.empty or "bbox" not in labels:
        return {}
    part = labels.loc[labels["item_id"].isin(item_ids)]
    return {
        item: dict(zip(g["annotator_id"].astype(str), g["bbox"], strict=True))
        for item, g in part.groupby("item_id")
    }


def doctor_drilldown(report: doctor_reports.DoctorReport, code: str) -> None:
    """One doctor: headline metrics, trend, confusion, recall, bias, speed, exam and their
    worst disagreements with consensus, as thumbnails."""
    team = report.team
    row = team.loc[team["code"] == code].iloc[0]
    if charts.flag_label(row["flags"]) == charts.FLAG_OK:
        st.success(f"**{code}** raises no flag.", icon="✅")
    else:
        st.warning(f"**{code}** is flagged: {row['flags']}.", icon="🚩")

    team_median = team["median_duration_s"].median()
    cols = st.columns(7)
    for col, m, title in zip(
        cols[:4], CI_METRICS, ("κ", "Sensitivity", "Specificity", "F1"), strict=True
    ):
        col.metric(
            title,
            ci_text(row[m]),
            help=f"95% CI {ci_text(row[m], row.get(f'{m}_low'), row.get(f'{m}_high'))} "
            f"against {report.reference}",
            border=True,
        )
        col.caption(f"CI {ci_text(row.get(f'{m}_low'))}–{ci_text(row.get(f'{m}_high'))}")
    dur = row["median_duration_s"]
    cols[4].metric(
        "Time",
        "—" if _isnan(dur) else f"{dur:.0f} s",
        help="median seconds per label; too fast: share of labels faster than the team's pace",
        border=True,
    )
    vs_team = "" if _isnan(dur) or _isnan(team_median) else f"team {team_median:.0f} s · "
    cols[4].caption(f"{vs_team}too fast {_share(row['too_fast_share'])}")
    exam = report.exam.loc[report.exam["code"] == code] if not report.exam.empty else report.exam
    if exam.empty:
        cols[5].metric("Exam", "—", help="no exam answers for this doctor", border=True)
        cols[5].caption("not examined")
    else:
        e = exam.iloc[0]
        cols[5].metric("Exam", _share(e["accuracy"]), border=True)
        cols[5].caption(f"{int(e['correct'])} of {int(e['n'])} correct")
    cols[6].metric("Gold", _share(row.get("gold_accuracy")), border=True)
    gold_n = row.get("gold_n")
    cols[6].caption("no gold labels" if _isnan(gold_n) or not gold_n else f"on {int(gold_n)} items")

    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Weekly κ against consensus**")
        weekly = report.weekly.loc[report.weekly["code"] == code]
        if weekly.empty:
            st.info("No weekly trend: too few labels per week.", icon="📉")
        else:
            st.plotly_chart(
                charts.weekly_trend_chart(weekly, overall=row["kappa"]),
                key="doctors_weekly",
                config={"displayModeBar": False},
            )
    with right:
        st.markdown("**Confusion against consensus**")
        matrix = report.confusion.get(code)
        if matrix is None or matrix.empty:
            st.info("No confusion matrix for this doctor.", icon="🧮")
        else:
            st.plotly_chart(
                charts.confusion_chart(matrix),
                key="doctors_confusion",
                config={"displayModeBar": False},
            )

    c_recall, c_bias, c_speed = st.columns(3)
    with c_recall:
        st.markdown("**Recall per class**")
        recall = report.per_class_recall.loc[report.per_class_recall["code"] == code]
        if recall.empty:
            st.info("No per-class recall.", icon="📊")
        else:
            st.plotly_chart(
                charts.recall_chart(recall), key="doctors_recall", config={"displayModeBar": False}
            )
    with c_bias:
        st.markdown("**Class bias against consensus**")
        bias = report.bias.loc[report.bias["code"] == code]
        if bias.empty:
            st.info("No class bias.", icon="📊")
        else:
            st.plotly_chart(
                charts.bias_chart(bias), key="doctors_bias", config={"displayModeBar": False}
            )
    with c_speed:
        st.markdown("**Speed against the team**")
        st.plotly_chart(
            charts.speed_chart(team, code), key="doctors_speed", config={"displayModeBar": False}
        )

    st.markdown(f"**Worst disagreements of {code} with consensus**")
    worst = doctor_disagreements(report, code)
    if worst.empty:
        st.success(f"{code} agrees with consensus on every item they labelled.", icon="✅")
        return
    refs = data.image_refs(worst["item_id"])
    uris = dict(zip(refs["image_id"], refs["uri"], strict=True))
    boxes = (
        _boxes_by_item(report.labels, list(worst["item_id"])) if report.task.kind == "bbox" else {}
    )
    items = worst.assign(
        uri=worst["item_id"].map(uris),
        boxes=worst["item_id"].map(lambda i: boxes.get(i)),
    )
    _gallery(
        items, colors=thumbs.annotator_colors(team["code"]), highlight=code, key="doctors_worst"
    )


# --------------------------------------------------------------------------- comparison


def _compare_metrics(team: pd.DataFrame) -> list[str]:
    metrics = [m for m in CI_METRICS if _has(team, m)]
    return metrics + [
        m for m in ("box_f1", "mean_iou", "dice", "gold_accuracy", "exam_accuracy") if _has(team, m)
    ]


@charts.memo_figure
def _compare(report: doctor_reports.DoctorReport, a: str, b: str) -> pd.DataFrame:
    """:func:`quality.doctors.compare_doctors`, kept per report and pair (shared)."""
    return doctor_reports.compare_doctors(report, a, b)


def comparison(report: doctor_reports.DoctorReport) -> None:
    """Two doctors side by side: :func:`quality.doctors.compare_doctors` and grouped bars."""
    c_a, c_b = st.columns(2)
    with c_a:
        a = doctor_picker(report, key="doctors_compare_a", label="Doctor A", default=0)
    with c_b:
        b = doctor_picker(
            report, key="doctors_compare_b", label="Doctor B", default=len(report.team) - 1
        )
    if a == b:
        st.info("Pick two different doctors to compare.", icon="↔️")
        return
    table = _compare(report, a, b)
    pair = {m: table.loc[m].iloc[0] for m in _PAIR_ROWS if m in table.index}
    if pair:
        cols = st.columns(3)
        shared = pair.get("shared_items")
        cols[0].metric("Items both labelled", "—" if _isnan(shared) else f"{int(shared):,}")
        cols[1].metric(f"{a} and {b} agree on", _share(pair.get("agreement_with_other")))
        cols[2].metric(f"κ between {a} and {b}", ci_text(pair.get("kappa_with_other")))
    left, right = st.columns([2, 3])
    with left:
        rest = table.drop(index=[m for m in _PAIR_ROWS if m in table.index])
        shown = _compare_display(rest.loc[rest.notna().any(axis=1)])
        st.dataframe(
            shown, key="doctors_compare_table", height=min(_ROW_PX * (len(shown) + 1) + 3, 720)
        )
    with right:
        st.plotly_chart(
            charts.compare_chart(report.team, [a, b], _compare_metrics(report.team)),
            key="doctors_compare_chart",
            config={"displayModeBar": False},
        )


_PAIR_ROWS = ("shared_items", "agreement_with_other", "kappa_with_other")


def _cell(value: Any, metric: str) -> str:
    if _isnan(value):
        return "—"
    if isinstance(value, str):
        return value
    counts = metric == "rank" or metric.startswith("n_") or metric.endswith("_n")
    return f"{int(value):,}" if counts else f"{float(value):.2f}"


def _compare_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`quality.doctors.compare_doctors` for reading: ``estimate [low–high]`` in one
    row per metric, numbers rounded."""
    rows: dict[str, list[str]] = {}
    index = list(table.index)
    for m in index:
        if str(m).endswith(("_low", "_high")) and str(m).rsplit("_", 1)[0] in index:
            continue
        low, high = f"{m}_low", f"{m}_high"
        if low in index and high in index:
            rows[str(m)] = [
                ci_text(table.at[m, c], table.at[low, c], table.at[high, c]) for c in table.columns
            ]
        else:
            rows[str(m)] = [_cell(table.at[m, c], str(m)) for c in table.columns]
    out = pd.DataFrame.from_dict(rows, orient="index", columns=[str(c) for c in table.columns])
    out.index.name = "metric"
    return out


def report_downloads(report: doctor_reports.DoctorReport) -> None:
    """Download buttons for the report as Markdown, HTML and CSV."""
    stem = f"doctors-{_slug(report.task.name)}"
    c_md, c_html, c_csv = st.columns(3)
    widgets.download_button(
        "⬇️ Markdown", report.to_markdown, file_name=f"{stem}.md", what="doctor report",
        mime="text/markdown", key="doctors_dl_md", container=c_md, width="stretch",
    )  # fmt: skip
    widgets.download_button(
        "⬇️ HTML", report.to_html, file_name=f"{stem}.html", what="doctor report",
        mime="text/html", key="doctors_dl_html", container=c_html, width="stretch",
    )  # fmt: skip
    widgets.download_button(
        "⬇️ CSV", report.to_csv, file_name=f"{stem}.csv", what="doctor report",
        mime="text/csv", key="doctors_dl_csv", container=c_csv, width="stretch",
        rows=len(report.team),
    )  # fmt: skip


# --------------------------------------------------------------------------- agreement


def agreement_metrics(summary: agreement_summaries.AgreementSummary) -> None:
    """Krippendorff's alpha with its CI, percent agreement, Fleiss' kappa, and the counts."""
    alpha = summary.alpha or {}
    cols = st.columns(5)
    level = alpha.get("level", "nominal")
    cols[0].metric(
        "Krippendorff's α",
        ci_text(alpha.get("estimate")),
        help="Agreement beyond chance over every annotator, missing labels allowed; "
        "1 is perfect, 0 is chance.",
        border=True,
    )
    cols[0].caption(f"{level} · 95% CI {ci_text(alpha.get('low'))}–{ci_text(alpha.get('high'))}")
    cols[1].metric(
        "Percent agreement",
        _share(summary.percent_agreement),
        help="Share of agreeing annotator pairs on the same item (not chance-corrected).",
        border=True,
    )
    cols[2].metric(
        "Fleiss' κ",
        ci_text(summary.fleiss),
        help="Needs the same number of labels on every item; — when the task has not.",
        border=True,
    )
    n_items, n_annot = alpha.get("n_items"), alpha.get("n_annotators")
    cols[3].metric("Items", "—" if _isnan(n_items) else f"{int(n_items):,}", border=True)
    cols[4].metric("Annotators", "—" if _isnan(n_annot) else f"{int(n_annot):,}", border=True)


def agreement_heatmap(summary: agreement_summaries.AgreementSummary) -> None:
    """Pairwise doctor × doctor Cohen's kappa; blank where a pair shares too few items."""
    if summary.pairwise_kappa.empty:
        st.info("No pair of annotators shares enough items.", icon="🤝")
        return
    st.plotly_chart(
        charts.kappa_heatmap(summary.pairwise_kappa, summary.pairwise_n),
        key="agreement_heatmap",
        config={"displayModeBar": False},
    )
    st.caption("Blank cells: the pair shares too few items for a kappa. Hover for the counts.")


def per_class_agreement(summary: agreement_summaries.AgreementSummary) -> None:
    """Specific agreement and one-vs-rest kappa per class."""
    if summary.per_class.empty:
        st.info("No per-class agreement.", icon="📊")
        return
    st.plotly_chart(
        charts.per_class_agreement_chart(summary.per_class),
        key="agreement_per_class",
        config={"displayModeBar": False},
    )


def _caption(rec: Mapping[str, Any], colors: Mapping[str, str], highlight: str | None) -> str:
    consensus = str(rec.get("consensus"))
    head = f"image {rec['item_id']} · consensus <b>{html.escape(consensus)}</b>"
    if not _isnan(rec.get("agreement")):
        head += f" · agreement {float(rec['agreement']):.0%}"
    parts = []
    labels = rec.get("labels") if isinstance(rec.get("labels"), Mapping) else {}
    for code, label in sorted(labels.items()):
        color = colors.get(str(code), "#888888")
        text = f"{html.escape(str(code))}: {html.escape(str(label))}"
        if str(label) != consensus:
            text = f"<b>{text}</b> ✗"
        if str(code) == highlight:
            text = f"<u>{text}</u>"
        parts.append(f"<span style='color:{color}'>■</span> {text}")
    return f"<div style='font-size:0.85rem'>{head}<br>{' · '.join(parts)}</div>"


def _gallery(
    items: pd.DataFrame, *, colors: Mapping[str, str], highlight: str | None, key: str
) -> None:
    """Thumbnails in a grid of columns, each with every annotator's label (and box)."""
    records = items.to_dict("records")
    for start in range(0, len(records), _GALLERY_COLS):
        cols = st.columns(_GALLERY_COLS)
        for col, rec in zip(cols, records[start : start + _GALLERY_COLS], strict=False):
            with col, st.container(border=True):
                uri = rec.get("uri")
                boxes = rec.get("boxes") if isinstance(rec.get("boxes"), Mapping) else None
                if _isnan(uri):
                    st.warning(f"Image {rec['item_id']} is not in the database any more.", icon="⚠️")
                else:
                    thumbs.render_thumb(
                        str(uri),
                        boxes=boxes,
                        colors=colors,
                        highlight=highlight,
                        key=f"{key}_{rec['item_id']}",
                    )
                # Markdown, not a caption: captions fade colours, and these must match the boxes.
                st.markdown(_caption(rec, colors, highlight), unsafe_allow_html=True)


def disagreement_gallery(summary: agreement_summaries.AgreementSummary) -> None:
    """The images with the most disagreement, each doctor's label (and box) on the image."""
    worst = summary.worst_items
    if worst.empty:
        st.success("Every item has full agreement.", icon="✅")
        return
    n_max = len(worst)
    n = n_max
    if n_max > _GALLERY_COLS:
        n = st.slider(
            "Images shown", _GALLERY_COLS, n_max, min(9, n_max), step=1, key="agreement_gallery_n"
        )
    codes = set(summary.pairwise_kappa.index.astype(str))
    for labels in worst["labels"]:
        if isinstance(labels, Mapping):
            codes.update(str(c) for c in labels)
    _gallery(
        worst.head(n), colors=thumbs.annotator_colors(codes), highlight=None, key="agreement_worst"
    )


def _csv(df: pd.DataFrame, *, index: bool = False) -> str:
    return df.to_csv(index=index)


def agreement_downloads(summary: agreement_summaries.AgreementSummary) -> None:
    """Download buttons for the pairwise, per-class and worst-item tables (CSV)."""
    stem = f"agreement-{_slug(summary.task.name)}"
    worst = summary.worst_items.copy()
    for col in ("labels", "boxes"):
        if col in worst:
            worst[col] = worst[col].map(
                lambda d: "" if not isinstance(d, Mapping) else str(dict(d))
            )
    c1, c2, c3 = st.columns(3)
    widgets.download_button(
        "⬇️ Pairwise κ (CSV)", lambda: _csv(summary.pairwise_kappa, index=True),
        file_name=f"{stem}-pairwise-kappa.csv", what="agreement: pairwise kappa",
        mime="text/csv", key="agreement_dl_pairwise", container=c1, width="stretch",
        rows=len(summary.pairwise_kappa),
    )  # fmt: skip
    widgets.download_button(
        "⬇️ Per class (CSV)", lambda: _csv(summary.per_class), file_name=f"{stem}-per-class.csv",
        what="agreement: per class", mime="text/csv", key="agreement_dl_per_class",
        container=c2, width="stretch", rows=len(summary.per_class),
    )  # fmt: skip
    widgets.download_button(
        "⬇️ Worst items (CSV)", lambda: _csv(worst), file_name=f"{stem}-worst-items.csv",
        what="agreement: worst items", mime="text/csv", key="agreement_dl_worst",
        container=c3, width="stretch", rows=len(worst),
    )  # fmt: skip
