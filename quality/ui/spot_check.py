"""Sections of the Spot-check page, and their cached reads.

The page walks a clinician through a saved review session (:mod:`quality.review`): pick a
reviewer and a model version, draw or resume a sample, then judge one study at a time.

Caching. Reads that change only when this page writes (versions, reviewers, sessions, the
summary, the export and the overlays, which include reviewers' corrections) are :func:`st.cache_data` with :data:`~quality.ui.data.QUERY_TTL_S`,
keyed by the DB URL, and are cleared after each write (only these: the viewer's decoded
pixels stay cached, so the re-render after a verdict does not decode the image again). A
session's items never change once saved. Progress, the current verdict and the next
unreviewed item are read fresh on every run (one small query each).

Form state. The verdict widgets are keyed by session and prediction, so what a clinician
typed survives the rerun after a failed write; a failed write also stores the entry and the
verdict pressed in ``st.session_state["spot_drafts"]``, which pre-fills the widgets when the
clinician comes back to that study later, and offers a "💾 Save again" button for the
pending verdict. A successful write drops the draft.

A database outage. A verdict pressed while the database cannot be reached (a stopped or
restarting server) is not lost: the page says so plainly (:func:`unavailable_text`), keeps
the draft, and once the server is back, "💾 Save again" writes it. The write is an upsert on
(prediction, reviewer) (:func:`quality.review.submit_verdict`), so a retry never stores a
second row. The shared engine needs no reset after a restart: PostgreSQL engines ping a
pooled connection before use (``pool_pre_ping``) and replace dead ones, and
:func:`st.cache_data` does not cache exceptions, so the reads work again on the next run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from quality import review as rv
from quality.errors import (
    DatabaseUnavailableError,
    EmptyDatabaseError,
    QualityError,
    SchemaOutdatedError,
)
from quality.overlays import Overlay, overlays_for_image
from quality.ui import data, trail, viewer, widgets

__all__ = [
    "DEFAULT_SAMPLE_SIZE",
    "NEW_REVIEWER",
    "NO_CORRECTION",
    "STRATEGY_LABELS",
    "agreement_chart",
    "clear_review_caches",
    "downloads",
    "guard",
    "new_session_form",
    "review_item",
    "reviewer_picker",
    "session_picker",
    "show_flash",
    "summary_section",
    "unavailable_text",
    "version_picker",
]

T = TypeVar("T")

DEFAULT_SAMPLE_SIZE = 20
NEW_REVIEWER = "➕ New reviewer…"
NO_CORRECTION = "(no correction)"
STRATEGY_LABELS = {
    "random": "Random",
    "stratified": "Stratified by class × source",
    "lowest_confidence": "Lowest confidence (score nearest 0.5)",
    "disagreement": "Model vs annotators' consensus disagreement",
    "ood": "Out-of-distribution images",
}
_CONSENSUS_LABELS = {"majority": "Majority vote", "dawid_skene": "Dawid-Skene"}
_VERDICT_BUTTONS = (("agree", "👍 Agree"), ("disagree", "👎 Disagree"), ("unsure", "🤷 Unsure"))
_VERDICT_ICONS = {"agree": "👍", "disagree": "👎", "unsure": "🤷"}
_BOX = ("x0", "y0", "x1", "y1")
_HIDDEN_GROUPS = ("annotation", "reference", "correction")
_FLASH = "spot_flash"
_DRAFTS = "spot_drafts"
_REVIEWER_KEY = "spot_reviewer"
_SESSION_KEY = "spot_session"
_VERSION_KEY = "spot_version"
_MARGIN = {"l": 10, "r": 10, "t": 30, "b": 10}
_VERSION_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


# --------------------------------------------------------------------------- cached reads


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _versions(url: str) -> pd.DataFrame:
    return data.run_query(url, rv.list_model_versions)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _reviewers(url: str) -> pd.DataFrame:
    return data.run_query(url, rv.list_reviewers)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _sessions(url: str, model_version_id: int) -> pd.DataFrame:
    return data.run_query(url, rv.list_sessions, model_version_id)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _items(url: str, review_session_id: int) -> pd.DataFrame:
    return data.run_query(url, rv.session_items, review_session_id)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _classes(url: str, model_version_id: int) -> list[str]:
    return data.run_query(url, rv.version_classes, model_version_id)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner="Summarising the verdicts…")
def _summary(
    url: str, model_version_id: int | None, review_session_id: int | None
) -> rv.ReviewSummary:
    return data.run_query(
        url,
        rv.review_summary,
        model_version_id=model_version_id,
        review_session_id=review_session_id,
    )


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _export(url: str, model_version_id: int | None, review_session_id: int | None) -> pd.DataFrame:
    return data.run_query(
        url,
        rv.export_reviews,
        model_version_id=model_version_id,
        review_session_id=review_session_id,
    )


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _overlays(url: str, image_id: int, model_version_id: int) -> list[Overlay]:
    return data.run_query(url, overlays_for_image, image_id, model_version_ids=(model_version_id,))


def clear_review_caches() -> None:
    """Drop the cached reads a write can change (not the viewer's pixels, not others')."""
    # _overlays too: a verdict's corrected box is drawn (as a correction) on the image.
    for fn in (_versions, _reviewers, _sessions, _summary, _export, _overlays):
        fn.clear()


def _read(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """An uncached read in its own session (progress, the current verdict)."""
    return data.run_query(data.db_url(), fn, *args, **kwargs)


def _write(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a writer in its own committed session on the read-write DB, then drop the caches
    it made stale."""
    try:
        return data.run_write(fn, *args, **kwargs)
    finally:
        clear_review_caches()


# --------------------------------------------------------------------------- guards & flash


@contextlib.contextmanager
def guard(*, stop: bool = True) -> Iterator[None]:
    """DB trouble stops the page with the standard messages; an outdated schema says to
    upgrade; other domain errors become a warning (and stop the page when ``stop``)."""
    try:
        yield
    except EmptyDatabaseError as exc:
        data.show_empty(exc)
    except DatabaseUnavailableError as exc:
        data.show_unavailable(exc)
    except SchemaOutdatedError as exc:
        st.error(f"The spot-check cannot run: {exc}", icon="🚫")
        st.stop()
    except QualityError as exc:
        st.warning(f"{exc}", icon="⚠️")
        if stop:
            st.stop()


def _flash(kind: str, text: str) -> None:
    st.session_state[_FLASH] = (kind, text)


def show_flash() -> None:
    """The message the last callback left (shown once)."""
    flash = st.session_state.pop(_FLASH, None)
    if not flash:
        return
    kind, text = flash
    if kind == "success":
        st.success(text, icon="✅")
    elif kind == "error":
        st.error(text, icon="🚫")
    else:
        st.info(text, icon="ℹ️")


# --------------------------------------------------------------------------- pickers


def _add_reviewer() -> None:
    """Callback: make the typed reviewer's users row and pick it."""
    name = str(st.session_state.get("spot_new_reviewer") or "").strip()
    try:
        _write(rv.ensure_reviewer, name)
    except QualityError as exc:
        _flash("error", f"Reviewer not added: {exc}")
        return
    st.session_state[_REVIEWER_KEY] = name
    st.session_state["spot_new_reviewer"] = ""


def reviewer_picker() -> int | None:
    """The reviewer: the signed-in user; in demo mode (no sign-in) a picked or typed name.

    Outside demo mode nobody may give verdicts under another person's name, so there is no
    picker: the verdicts are the signed-in user's.

    Returns
    -------
    The reviewer's user id, or None while none is picked.
    """
    from quality.ui import auth as ui_auth

    user = ui_auth.current_user()
    if user is not None:
        st.caption(f"Reviewing as **{user.username}** (signed in).")
        return user.id
    users = _reviewers(data.db_url())
    names = [str(u) for u in users["username"]]
    options = [*names, NEW_REVIEWER]
    if st.session_state.get(_REVIEWER_KEY) not in options:
        st.session_state[_REVIEWER_KEY] = names[0] if names else NEW_REVIEWER
    left, right = st.columns([2, 3])
    choice = left.selectbox(
        "Reviewer",
        options,
        key=_REVIEWER_KEY,
        help="Demo mode has no sign-in: pick your name, or add it once.",
    )
    if choice == NEW_REVIEWER:
        with right:
            st.text_input("New reviewer name", key="spot_new_reviewer", max_chars=64)
            st.button("Add reviewer", key="spot_add_reviewer", on_click=_add_reviewer)
        return None
    ids = dict(zip(users["username"], users["user_id"], strict=True))
    return int(ids[choice])


def _version_label(rec: pd.Series) -> str:
    return (
        f"{rec['model']} {rec['version']} ({rec['status']}) · "
        f"{int(rec['n_predictions']):,} predictions · {int(rec['n_reviews']):,} reviews"
    )


def version_picker() -> int:
    """Pick the model version to review (shadow versions first: they are what a spot-check
    is for); stops the page with a hint when there are no model predictions."""
    versions = _versions(data.db_url())
    versions = versions.loc[versions["n_predictions"] > 0]
    if versions.empty:
        st.info(
            "No model predictions yet: load a model version's predictions into the "
            "`predictions` table (the demo, `quality demo`, makes two versions).",
            icon="🤖",
        )
        st.stop()
    rank = versions["status"].map({"shadow": 0, "candidate": 1, "production": 2}).fillna(3)
    versions = versions.assign(_rank=rank).sort_values(["_rank", "model", "model_version_id"])
    labels = {int(r["model_version_id"]): _version_label(r) for _, r in versions.iterrows()}
    options = list(labels)
    if st.session_state.get(_VERSION_KEY) not in options:
        st.session_state[_VERSION_KEY] = options[0]
    return int(
        st.selectbox("Model version", options, key=_VERSION_KEY, format_func=labels.__getitem__)
    )


# --------------------------------------------------------------------------- sessions


def _create(model_version_id: int, dataset_id: int | None, reviewer_id: int | None) -> None:
    """Form callback: draw (or find again) the sample and pick its session."""
    ss = st.session_state
    strategy = str(ss.get("spot_strategy") or "random")
    try:
        info: rv.ReviewSessionInfo = _write(
            rv.create_session,
            model_version_id,
            strategy,
            int(ss.get("spot_size") or DEFAULT_SAMPLE_SIZE),
            int(ss.get("spot_seed") or 0),
            dataset_id,
            consensus=str(ss.get("spot_consensus") or "majority"),
            created_by=reviewer_id,
        )
    except QualityError as exc:
        _flash("error", f"No sample drawn: {exc}")
        return
    ss[_SESSION_KEY] = info.id
    if info.reused:
        _flash("info", f"Resumed the same sample: **{info.name}** ({info.sample_size} studies).")
    else:
        _flash("success", f"Drew **{info.name}**: {info.sample_size} studies to review.")


def new_session_form(
    model_version_id: int, dataset_id: int | None, reviewer_id: int | None, *, expanded: bool
) -> None:
    """Strategy, size and seed; drawing the same sample again resumes its session."""
    scope = "the images of the dataset picked in the sidebar" if dataset_id else "all images"
    with (
        st.expander("🎲 Draw a sample", expanded=expanded),
        st.form("spot_new_session", border=False),
    ):
        st.caption(
            f"Samples this version's labelled predictions on {scope}. Same seed, same sample."
        )
        c1, c2, c3, c4 = st.columns([3, 1, 1, 2])
        c1.selectbox(
            "Strategy",
            list(rv.STRATEGIES),
            key="spot_strategy",
            format_func=STRATEGY_LABELS.__getitem__,
        )
        c2.number_input(
            "Sample size", 1, rv.MAX_SAMPLE_SIZE, DEFAULT_SAMPLE_SIZE, step=1, key="spot_size"
        )
        c3.number_input("Seed", 0, 2**31 - 1, 0, step=1, key="spot_seed")
        c4.selectbox(
            "Consensus (disagreement)",
            list(rv.CONSENSUS_METHODS),
            key="spot_consensus",
            format_func=_CONSENSUS_LABELS.__getitem__,
        )
        st.form_submit_button(
            "🎲 Draw and start",
            key="spot_draw",
            type="primary",
            on_click=_create,
            args=(model_version_id, dataset_id, reviewer_id),
        )


def session_picker(model_version_id: int) -> int | None:
    """Pick one of the version's saved sessions (newest first); None when there is none."""
    sessions = _sessions(data.db_url(), model_version_id)
    if sessions.empty:
        st.info("No review session for this version yet: draw a sample to start.", icon="🎲")
        return None
    labels = {
        int(r["session_id"]): (
            f"{r['name']} · {int(r['n_reviewed'])}/{int(r['sample_size'])} reviewed"
            + (f" · by {r['created_by']}" if r["created_by"] else "")
        )
        for _, r in sessions.iterrows()
    }
    options = list(labels)
    if st.session_state.get(_SESSION_KEY) not in options:
        st.session_state[_SESSION_KEY] = options[0]
    return int(
        st.selectbox("Review session", options, key=_SESSION_KEY, format_func=labels.__getitem__)
    )


# --------------------------------------------------------------------------- one study


def _pos_key(review_session_id: int) -> str:
    return f"spot_pos_{review_session_id}"


def _wkey(review_session_id: int, prediction_id: int, field: str) -> str:
    return f"spot_{field}_{review_session_id}_{prediction_id}"


def _draft_key(review_session_id: int, prediction_id: int, reviewer_id: int) -> str:
    return f"{review_session_id}:{prediction_id}:{reviewer_id}"


def _entry(review_session_id: int, prediction_id: int) -> dict[str, Any]:
    """What the widgets of one study hold now."""
    ss = st.session_state
    label = ss.get(_wkey(review_session_id, prediction_id, "label"))
    box = None
    if ss.get(_wkey(review_session_id, prediction_id, "boxon")):
        box = [float(ss.get(_wkey(review_session_id, prediction_id, c)) or 0) for c in _BOX]
    return {
        "corrected_label": None if label in (None, NO_CORRECTION) else str(label),
        "corrected_bbox": box,
        "comment": str(ss.get(_wkey(review_session_id, prediction_id, "comment")) or ""),
    }


def _submit(
    review_session_id: int, prediction_id: int, reviewer_id: int, verdict: str, position: int
) -> None:
    """Verdict-button callback: write, then go on to the next unreviewed study.

    A failed write leaves the entry in the widgets, and the entry with the verdict in the
    drafts, and says why; an unreachable database says to save again once it is back.
    """
    entry = _entry(review_session_id, prediction_id)
    drafts: dict[str, dict[str, Any]] = st.session_state.setdefault(_DRAFTS, {})
    key = _draft_key(review_session_id, prediction_id, reviewer_id)
    try:
        _write(
            rv.submit_verdict,
            prediction_id,
            reviewer_id,
            verdict,
            **entry,
            actor=trail.actor(),
            review_session_id=review_session_id,
        )
    except DatabaseUnavailableError as exc:
        drafts[key] = {**entry, "verdict": verdict}
        _flash("error", unavailable_text(verdict, position, exc))
        return
    except QualityError as exc:
        drafts[key] = {**entry, "verdict": verdict}
        _flash("error", f"Not saved — {exc}. What you entered is kept; correct it or try again.")
        return
    drafts.pop(key, None)
    try:
        nxt = _read(rv.next_unreviewed, review_session_id, reviewer_id, position)
    except QualityError:
        nxt = None
    icon = _VERDICT_ICONS[verdict]
    if nxt is None:
        _flash(
            "success", f"{icon} Saved “{verdict}” on study {position + 1}. Every study is done 🎉"
        )
        return
    st.session_state[_pos_key(review_session_id)] = nxt
    _flash("success", f"{icon} Saved “{verdict}” on study {position + 1}; on to study {nxt + 1}.")


def unavailable_text(verdict: str, position: int, exc: DatabaseUnavailableError) -> str:
    """What a clinician reads when a verdict could not be written because the database
    cannot be reached (the URL without password and the driver's first line, no PHI)."""
    reason = exc.reason.strip().splitlines()[0] if exc.reason.strip() else "no reason given"
    return (
        f"Cannot reach the database `{exc.url}` ({reason}), so your "
        f"{_VERDICT_ICONS.get(verdict, '')} “{verdict}” on study {position + 1} was not saved. "
        "Your verdict was kept, with the corrected label, box and comment: press "
        "**💾 Save again** on that study when the database is back."
    )


def _go(review_session_id: int, position: int) -> None:
    st.session_state[_pos_key(review_session_id)] = position


def _go_unreviewed(review_session_id: int, reviewer_id: int, position: int) -> None:
    try:
        nxt = _read(rv.next_unreviewed, review_session_id, reviewer_id, position)
    except QualityError as exc:
        _flash("error", str(exc))
        return
    if nxt is None:
        _flash("info", "Every study of this session has your verdict.")
    else:
        st.session_state[_pos_key(review_session_id)] = nxt


def _render_image(item: pd.Series, model_version_id: int) -> None:
    """The viewer with this version's prediction drawn over the image. Doctors' annotations,
    reference labels and reviewers' corrections are there too but start hidden, so the
    clinician judges the model first and may switch them on."""
    try:
        shapes = _overlays(data.db_url(), int(item["image_id"]), model_version_id)
    except QualityError as exc:
        st.caption(f"Overlays unavailable: {exc}")
        shapes = []
    viewer.render_image_viewer(
        str(item["uri"]), key="spot_viewer", overlays=shapes, hidden_groups=_HIDDEN_GROUPS
    )


def _as_box(value: object) -> list[float] | None:
    """A stored ``[x0, y0, x1, y1]`` as floats, or None for anything else (bad data is not
    drawn into the form, and never crashes the page)."""
    if not isinstance(value, list | tuple) or len(value) != 4:
        return None
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        return None


def _defaults(
    item: pd.Series, existing: rv.Verdict | None, draft: dict[str, Any] | None
) -> dict[str, Any]:
    """Starting values of the widgets: the unsaved draft, else the saved verdict, else the
    prediction's own box (a reviewer moves its corners)."""
    pred_box = _as_box(item["bbox"])
    if draft is not None:
        return {
            **draft,
            "corrected_bbox": draft["corrected_bbox"] or pred_box,
            "box_on": draft["corrected_bbox"] is not None,
        }
    if existing is not None:
        return {
            "corrected_label": existing.corrected_label,
            "corrected_bbox": existing.corrected_bbox or pred_box,
            "comment": existing.comment or "",
            "box_on": existing.corrected_bbox is not None,
        }
    return {"corrected_label": None, "corrected_bbox": pred_box, "comment": "", "box_on": False}


def _box_inputs(sid: int, pid: int, item: pd.Series, box: list[float] | None, on: bool) -> None:
    cols_px = None if pd.isna(item["cols"]) else float(item["cols"])
    rows_px = None if pd.isna(item["rows"]) else float(item["rows"])
    st.checkbox("Correct the box", value=on, key=_wkey(sid, pid, "boxon"))
    start = box or [0.0, 0.0, cols_px or 1.0, rows_px or 1.0]
    limits = (cols_px, rows_px, cols_px, rows_px)
    for col, name, value, top in zip(st.columns(4), _BOX, start, limits, strict=True):
        value = float(value) if top is None else min(max(float(value), 0.0), top)
        col.number_input(
            name, min_value=0.0, max_value=top, value=value, step=1.0, key=_wkey(sid, pid, name)
        )
    st.caption("Pixels of the stored image; x1, y1 exclusive.")


def review_item(review_session_id: int, reviewer_id: int, model_version_id: int) -> None:
    """One study of the session: the image, the prediction, the verdict form, navigation,
    and "k of n done"."""
    items = _items(data.db_url(), review_session_id)
    if items.empty:
        st.info("This session has no studies left (its predictions were deleted).", icon="🗂️")
        return
    n = len(items)
    pos_key = _pos_key(review_session_id)
    if pos_key not in st.session_state:
        first = _read(rv.next_unreviewed, review_session_id, reviewer_id)
        st.session_state[pos_key] = 0 if first is None else first
    pos = min(max(int(st.session_state[pos_key]), 0), n - 1)
    item = items.iloc[pos]
    pid = int(item["prediction_id"])
    prog = _read(rv.progress, review_session_id, reviewer_id)
    existing = _read(rv.get_review, pid, reviewer_id)

    st.progress(prog.fraction, text=f"**{prog.done} of {prog.total} done**")
    mark = (
        f" · {_VERDICT_ICONS[existing.verdict]} you said **{existing.verdict}**" if existing else ""
    )
    st.markdown(f"#### Study {pos + 1} of {n}{mark}")

    left, right = st.columns([3, 2])
    with left:
        _render_image(item, model_version_id)
    with right:
        _prediction_card(item)
        drafts = st.session_state.get(_DRAFTS, {})
        draft = drafts.get(_draft_key(review_session_id, pid, reviewer_id))
        start = _defaults(item, existing, draft)
        classes = _classes(data.db_url(), model_version_id)
        options = [NO_CORRECTION, *classes]
        label = start.get("corrected_label")
        st.selectbox(
            "Corrected label",
            options,
            index=options.index(label) if label in options else 0,
            key=_wkey(review_session_id, pid, "label"),
            help="What the image shows, if the model got it wrong.",
        )
        _box_inputs(review_session_id, pid, item, start["corrected_bbox"], start["box_on"])
        st.text_area(
            "Comment",
            value=start.get("comment") or "",
            key=_wkey(review_session_id, pid, "comment"),
            max_chars=rv.MAX_COMMENT_CHARS,
            height=80,
        )
        pending = draft.get("verdict") if draft else None
        if pending in _VERDICT_ICONS:
            st.warning(
                f"Not saved yet: your {_VERDICT_ICONS[pending]} “{pending}” on this study. "
                "What you entered is kept here: save it again.",
                icon="💾",
            )
            st.button(
                f"💾 Save again ({pending})",
                key="spot_retry",
                type="primary",
                on_click=_submit,
                args=(review_session_id, pid, reviewer_id, pending, pos),
                width="stretch",
            )
        for col, (verdict, text) in zip(st.columns(3), _VERDICT_BUTTONS, strict=True):
            col.button(
                text,
                key=f"spot_verdict_{verdict}",
                type="primary"
                if existing is not None and existing.verdict == verdict
                else "secondary",
                on_click=_submit,
                args=(review_session_id, pid, reviewer_id, verdict, pos),
                width="stretch",
            )
        back, nxt, todo = st.columns(3)
        back.button(
            "⬅️ Back",
            key="spot_back",
            disabled=pos == 0,
            on_click=_go,
            args=(review_session_id, pos - 1),
            width="stretch",
        )
        nxt.button(
            "Next ➡️",
            key="spot_next",
            disabled=pos >= n - 1,
            on_click=_go,
            args=(review_session_id, pos + 1),
            width="stretch",
        )
        todo.button(
            "⏭️ To do",
            key="spot_todo",
            help="The next study without your verdict.",
            on_click=_go_unreviewed,
            args=(review_session_id, reviewer_id, pos),
            width="stretch",
        )


def _prediction_card(item: pd.Series) -> None:
    with st.container(border=True):
        c1, c2 = st.columns(2)
        c1.metric("Model says", str(item["label"]))
        score = item["score"]
        c2.metric(
            "Score",
            "—" if pd.isna(score) else f"{float(score):.3f}",
            help="Probability of a finding (0.5 is the decision boundary).",
        )
        box = _as_box(item["bbox"])
        where = f" · box {[round(v) for v in box]}" if box else ""
        st.caption(f"Source **{item['source']}**{where}")


# --------------------------------------------------------------------------- summary


def agreement_chart(df: pd.DataFrame, x: str, title: str) -> go.Figure:
    """Agreement with 95% Wilson error bars, one bar group per model version.

    Parameters
    ----------
    df : rows of :class:`quality.review.ReviewSummary` tables: ``model, version, <x>,
        agreement, agreement_low, agreement_high, n_agree, n_disagree``.
    x : the category column (``version``, ``label`` or ``source``).
    title : chart title.
    """
    fig = go.Figure()
    shown = df.loc[df["agreement"].notna()]
    for i, ((model, version), grp) in enumerate(shown.groupby(["model", "version"], sort=False)):
        fig.add_bar(
            x=grp[x].astype(str),
            y=grp["agreement"],
            name=f"{model} {version}",
            marker_color=_VERSION_COLORS[i % len(_VERSION_COLORS)],
            error_y={
                "type": "data",
                "symmetric": False,
                "array": (grp["agreement_high"] - grp["agreement"]).clip(lower=0).tolist(),
                "arrayminus": (grp["agreement"] - grp["agreement_low"]).clip(lower=0).tolist(),
                "thickness": 1.2,
                "width": 3,
            },
            customdata=grp[["n_agree", "n_disagree"]].to_numpy(),
            hovertemplate="%{x}: %{y:.2f} (agree %{customdata[0]}, disagree %{customdata[1]})"
            "<extra></extra>",
        )
    fig.update_layout(
        title=title,
        barmode="group",
        height=320,
        margin=_MARGIN,
        legend={"orientation": "h", "y": -0.2, "x": 0},
    )
    fig.update_yaxes(range=[0, 1.05], title="agreement")
    return fig


_SCOPES = ("This session", "This model version", "All model versions")


def summary_section(
    model_version_id: int, review_session_id: int | None
) -> tuple[rv.ReviewSummary, pd.DataFrame, str]:
    """Agreement per version, class and source with CIs, κ, and the disagreements.

    Returns
    -------
    (summary, export frame, file stem) for :func:`downloads`.
    """
    scopes = list(_SCOPES if review_session_id is not None else _SCOPES[1:])
    if st.session_state.get("spot_scope") not in scopes:
        st.session_state["spot_scope"] = scopes[0]
    scope = st.radio("Reviews of", scopes, key="spot_scope", horizontal=True)
    mv = None if scope == "All model versions" else model_version_id
    sid = review_session_id if scope == "This session" else None
    url = data.db_url()
    summary = _summary(url, mv, sid)
    export = _export(url, mv, sid)
    stem = "reviews" + (f"-session-{sid}" if sid else f"-version-{mv}" if mv else "-all")
    if summary.n_reviews == 0:
        st.info("No verdicts here yet.", icon="🩺")
        return summary, export, stem
    cols = st.columns(len(summary.by_version))
    for col, (_, r) in zip(cols, summary.by_version.iterrows(), strict=True):
        agree = "—" if pd.isna(r["agreement"]) else f"{r['agreement']:.0%}"
        ci = (
            ""
            if pd.isna(r["agreement"])
            else f" [{r['agreement_low']:.0%}–{r['agreement_high']:.0%}]"
        )
        kappa = "n/a" if pd.isna(r["kappa"]) else f"{r['kappa']:.2f}"
        col.metric(
            f"{r['model']} {r['version']}",
            f"{agree}{ci}",
            help="Agreement = agree / (agree + disagree), 95% Wilson interval.",
            border=True,
        )
        col.caption(
            f"{int(r['n_reviews'])} verdicts: {int(r['n_agree'])} agree, "
            f"{int(r['n_disagree'])} disagree, {int(r['n_unsure'])} unsure · "
            f"κ(corrected vs model) {kappa} over {int(r['n_kappa'])}"
        )
    st.plotly_chart(
        agreement_chart(summary.by_version, "version", "Agreement per model version"),
        key="spot_chart_version",
    )
    left, right = st.columns(2)
    left.plotly_chart(
        agreement_chart(summary.by_class, "label", "Per predicted class"), key="spot_chart_class"
    )
    right.plotly_chart(
        agreement_chart(summary.by_source, "source", "Per source"), key="spot_chart_source"
    )
    st.subheader("Disagreements")
    if summary.disagreements.empty:
        st.caption("No clinician disagreed with the model here.")
    else:
        shown = summary.disagreements.drop(columns=["sop_uid", "created_at"])
        st.dataframe(shown, hide_index=True, key="spot_disagreements")
    return summary, export, stem


def downloads(summary: rv.ReviewSummary, export: pd.DataFrame, stem: str) -> None:
    """CSV downloads: every verdict, the disagreements, and the agreement tables."""
    files = {
        "Verdicts": rv.reviews_to_csv(export),
        "Disagreements": rv.reviews_to_csv(summary.disagreements),
        "Agreement per version": summary.by_version.to_csv(index=False),
        "Agreement per class": summary.by_class.to_csv(index=False),
        "Agreement per source": summary.by_source.to_csv(index=False),
    }
    cols = st.columns(len(files))
    for col, (label, text) in zip(cols, files.items(), strict=True):
        slug = label.lower().replace(" ", "-")
        widgets.download_button(
            f"⬇️ {label} (CSV)",
            text,
            file_name=f"{stem}-{slug}.csv",
            what=f"spot-check: {label}",
            mime="text/csv",
            key=f"spot_dl_{slug}",
            container=col,
            width="stretch",
        )
