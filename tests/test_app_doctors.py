"""AppTest of the Doctors and Agreement pages on the tiny demo, plus their edge cases.

The tiny demo (built once per module) has two labeling tasks on dataset 1: ``finding``
(classification) and ``finding-box`` (bbox), labelled by 12 doctors and 2 experts. On top of
it the fixture adds a dataset without tasks, a task without annotations and a task with one
annotator's labels, to check that each stops with a message instead of a traceback.

Runs after the first one execute the page file alone (the Streamlit quirk documented at the
top of ``test_app_pages.py``); the pages' ``router.page_guard`` keeps the router in place.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_demo_db
from sqlalchemy import select
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

from quality.db.schema import Annotation, Annotator, Dataset, LabelingTask
from quality.db.session import make_engine, upgrade
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
DOCTORS = "pages/doctors.py"
AGREEMENT = "pages/agreement.py"
TIMEOUT = 60
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/x"


@pytest.fixture(scope="module")
def demo(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The tiny demo DB, with the extra dataset and tasks; ids of what the tests pick."""
    url = copy_demo_db(tiny_demo, tmp_path_factory.mktemp("demo_doctors"))
    engine = make_engine(url)
    with Session(engine) as session:
        tasks = {t.kind: t for t in session.scalars(select(LabelingTask))}
        classification, bbox = tasks["classification"], tasks["bbox"]
        n_annotators = len(
            set(
                session.scalars(
                    select(Annotation.annotator_id).where(Annotation.task_id == classification.id)
                )
            )
        )
        empty_ds = Dataset(name="zz-no-tasks", owner="test")
        session.add(empty_ds)
        unlabelled = LabelingTask(
            dataset_id=classification.dataset_id, name="zz-unlabelled", kind="classification",
            classes=["normal", "nodule"],
        )  # fmt: skip
        single = LabelingTask(
            dataset_id=classification.dataset_id, name="zz-single", kind="classification",
            classes=["normal", "nodule"],
        )  # fmt: skip
        session.add_all([unlabelled, single])
        session.flush()
        first = session.scalars(select(Annotator).order_by(Annotator.code)).first()
        image_ids = session.scalars(
            select(Annotation.image_id).where(Annotation.task_id == classification.id).limit(3)
        ).all()
        session.add_all(
            Annotation(
                task_id=single.id,
                image_id=i,
                annotator_id=first.id,
                label="normal",
                created_at=dt.datetime(2024, 3, 1, tzinfo=dt.UTC),
            )
            for i in image_ids
        )
        session.commit()
        ids = {
            "url": url,
            "classification": classification.id,
            "bbox": bbox.id,
            "n_annotators": n_annotators,
            "empty_dataset": empty_ds.id,
            "unlabelled": unlabelled.id,
            "single": single.id,
        }
    engine.dispose()
    return ids


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    data.clear_caches()
    yield
    data.clear_caches()


def _open(
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    page: str,
    *,
    role: str = "admin",
    state: dict[str, object] | None = None,
) -> AppTest:
    """Run the router once, then switch to ``page``; ``state`` presets session state."""
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = role
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    at.switch_page(page).run()
    _ok(at)
    return at


def _open_direct(monkeypatch: pytest.MonkeyPatch, url: str, page: str, role: str) -> AppTest:
    """Open ``page`` itself, as if the router had switched to it (role checks in the page)."""
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT)
    at.session_state["role"] = role
    at.session_state["_routed_by_app"] = True
    at.run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _charts(at: AppTest) -> dict[str, str]:
    """Plotly charts by their widget key: key → figure JSON."""
    out = {}
    for chart in at.get("plotly_chart"):
        key = chart.proto.id.rsplit("-", 1)[-1]
        out[key] = chart.proto.spec
    return out


def _team(at: AppTest):
    """The team table (the page's first table; AppTest does not expose table keys)."""
    team = at.dataframe[0].value
    assert {"rank", "code", "kappa", "flags"} <= set(team.columns)
    return team


def _least_agreeing(team) -> str:
    """The lowest-ranked annotator with a kappa: they disagree with consensus somewhere."""
    return str(team.loc[team["kappa"] != "—", "code"].iloc[-1])


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.error, at.info, at.warning, at.success) for e in kind]
    return "\n".join(str(p) for p in parts)


def _downloads(at: AppTest) -> list[str]:
    return [b.proto.label for b in at.get("download_button")]


# --------------------------------------------------------------------------- Doctors


def test_doctors_page_on_demo(monkeypatch: pytest.MonkeyPatch, demo: dict) -> None:
    at = _open(monkeypatch, demo["url"], DOCTORS)
    assert at.title[0].value.endswith("Doctors")
    assert at.selectbox(key="doctors_task").value == demo["classification"]

    team = _team(at)
    assert len(team) == demo["n_annotators"]
    assert team["code"].is_unique and list(team["rank"]) == sorted(team["rank"])
    # "0.84 [0.51–1.00]", or "—" where an annotator shares too few items (experts, tiny demo).
    ci = r"-?\d\.\d\d \[-?\d\.\d\d–-?\d\.\d\d\]|—"
    assert team["kappa"].str.fullmatch(ci).all()
    assert (team["kappa"] != "—").sum() >= 10

    charts = _charts(at)
    assert {"doctors_ranking", "doctors_confusion", "doctors_recall", "doctors_bias",
            "doctors_speed", "doctors_compare_chart"} <= set(charts)  # fmt: skip
    assert '"error_y"' in charts["doctors_ranking"]
    assert _downloads(at)[:3] == ["⬇️ Markdown", "⬇️ HTML", "⬇️ CSV"]
    # The drill-down opens on a doctor; the comparison on the best and the last-ranked one.
    code = at.selectbox(key="doctors_code").value
    assert code in set(team["code"])
    assert code in _texts(at)
    a, b = at.selectbox(key="doctors_compare_a").value, at.selectbox(key="doctors_compare_b").value
    assert (a, b) == (team["code"].iloc[0], team["code"].iloc[-1])
    table = at.dataframe[-1].value
    assert list(table.columns) == [a, b] and "kappa" in table.index


def test_doctors_drilldown_and_comparison(monkeypatch: pytest.MonkeyPatch, demo: dict) -> None:
    at = _open(monkeypatch, demo["url"], DOCTORS)
    codes = at.selectbox(key="doctors_code").options
    for option in (codes[0], codes[-1]):
        code = option.split()[1]  # "#3 D05 (doctor)"
        at.selectbox(key="doctors_code").select(code).run()
        _ok(at)
        assert f"**{code}**" in _texts(at)
        assert "doctors_confusion" in _charts(at)
        assert any(code in m.value for m in at.markdown)  # "Worst disagreements of …"
    # The same doctor twice: a hint instead of a table.
    a = at.selectbox(key="doctors_compare_a").value
    at.selectbox(key="doctors_compare_b").select(a).run()
    _ok(at)
    assert "two different doctors" in _texts(at)
    assert "doctors_compare_chart" not in _charts(at)


def test_doctors_worst_disagreements_show_thumbnails(
    monkeypatch: pytest.MonkeyPatch, demo: dict
) -> None:
    at = _open(monkeypatch, demo["url"], DOCTORS)
    team = _team(at)
    at.selectbox(key="doctors_code").select(_least_agreeing(team)).run()
    _ok(at)
    thumbs = [k for k in _charts(at) if k.startswith("doctors_worst_")]
    assert thumbs, "expected thumbnails of the doctor's disagreements"


# --------------------------------------------------------------------------- Agreement


def test_agreement_page_on_demo(monkeypatch: pytest.MonkeyPatch, demo: dict) -> None:
    at = _open(monkeypatch, demo["url"], AGREEMENT)
    assert at.title[0].value.endswith("Agreement")
    metrics = {m.label: m.value for m in at.metric}
    assert float(metrics["Krippendorff's α"]) <= 1
    assert metrics["Annotators"] == str(demo["n_annotators"])
    assert metrics["Percent agreement"].endswith("%")
    charts = _charts(at)
    heatmap = json.loads(charts["agreement_heatmap"])
    assert heatmap["data"][0]["type"] == "heatmap"
    assert len(heatmap["data"][0]["y"]) == demo["n_annotators"]
    assert "agreement_per_class" in charts
    gallery = [k for k in charts if k.startswith("agreement_worst_")]
    assert gallery and len(gallery) == at.slider(key="agreement_gallery_n").value
    assert len(_downloads(at)) == 3


def test_agreement_gallery_size(monkeypatch: pytest.MonkeyPatch, demo: dict) -> None:
    at = _open(monkeypatch, demo["url"], AGREEMENT)
    at.slider(key="agreement_gallery_n").set_value(3).run()
    _ok(at)
    assert len([k for k in _charts(at) if k.startswith("agreement_worst_")]) == 3


@pytest.mark.parametrize("page", [DOCTORS, AGREEMENT])
def test_switch_to_bbox_task(monkeypatch: pytest.MonkeyPatch, demo: dict, page: str) -> None:
    at = _open(monkeypatch, demo["url"], page)
    key = "doctors_task" if page == DOCTORS else "agreement_task"
    at.selectbox(key=key).set_value(demo["bbox"]).run()
    _ok(at)
    assert at.selectbox(key=key).value == demo["bbox"]
    charts = _charts(at)
    if page == DOCTORS:
        team = _team(at)
        assert {"box_f1", "mean_iou"} <= set(team.columns)
        at.selectbox(key="doctors_code").select(_least_agreeing(team)).run()
        _ok(at)
        charts = _charts(at)
        prefix = "doctors_worst_"
    else:
        prefix = "agreement_worst_"
    # Boxes are drawn as rectangle shapes on the thumbnails.
    figures = [json.loads(v) for k, v in charts.items() if k.startswith(prefix)]
    assert figures
    shapes = [s for f in figures for s in f["layout"].get("shapes", [])]
    assert shapes and all(s["type"] == "rect" for s in shapes)


# --------------------------------------------------------------------------- roles


@pytest.mark.parametrize("page", [DOCTORS, AGREEMENT])
def test_clinician_is_refused(monkeypatch: pytest.MonkeyPatch, demo: dict, page: str) -> None:
    at = AppTest.from_file(str(ROOT / page), default_timeout=TIMEOUT)
    monkeypatch.setenv("QUALITY_DB_URL", demo["url"])
    at.session_state["role"] = "clinician"
    at.session_state["_routed_by_app"] = True
    at.run()
    assert not at.exception
    assert "cannot open this page" in _texts(at)
    assert not at.dataframe and not at.metric


def test_data_scientist_sees_agreement_not_doctors(
    monkeypatch: pytest.MonkeyPatch, demo: dict
) -> None:
    at = _open_direct(monkeypatch, demo["url"], AGREEMENT, "data scientist")
    assert at.title[0].value.endswith("Agreement") and at.metric
    refused = AppTest.from_file(str(ROOT / DOCTORS), default_timeout=TIMEOUT)
    refused.session_state["role"] = "data scientist"
    refused.session_state["_routed_by_app"] = True
    refused.run()
    assert not refused.exception
    assert "cannot open this page" in _texts(refused)


def test_labeling_manager_sees_both(monkeypatch: pytest.MonkeyPatch, demo: dict) -> None:
    for page in (DOCTORS, AGREEMENT):
        at = _open_direct(monkeypatch, demo["url"], page, "labeling manager")
        assert "cannot open this page" not in _texts(at)


# --------------------------------------------------------------------------- nothing to show


@pytest.mark.parametrize("page", [DOCTORS, AGREEMENT])
def test_dataset_without_tasks(monkeypatch: pytest.MonkeyPatch, demo: dict, page: str) -> None:
    at = _open(monkeypatch, demo["url"], page, state={"_dataset_id_picker": demo["empty_dataset"]})
    assert at.session_state["dataset_id"] == demo["empty_dataset"]
    assert "no labeling tasks" in _texts(at)
    assert not at.get("plotly_chart")


@pytest.mark.parametrize(
    ("task", "message"), [("unlabelled", "has no annotations"), ("single", "1 annotator")]
)
@pytest.mark.parametrize("page", [DOCTORS, AGREEMENT])
def test_task_without_enough_labels(
    monkeypatch: pytest.MonkeyPatch, demo: dict, page: str, task: str, message: str
) -> None:
    key = "doctors_task" if page == DOCTORS else "agreement_task"
    at = _open(monkeypatch, demo["url"], page, state={key: demo[task]})
    assert at.selectbox(key=key).value == demo[task]
    assert message in _texts(at)
    assert not at.get("plotly_chart")


@pytest.mark.parametrize("page", [DOCTORS, AGREEMENT])
def test_empty_db_shows_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, page: str) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    at = _open(monkeypatch, url, page)
    assert at.info and "has no data yet" in at.info[0].value


@pytest.mark.parametrize("page", [DOCTORS, AGREEMENT])
def test_unreachable_db_shows_error(monkeypatch: pytest.MonkeyPatch, page: str) -> None:
    monkeypatch.setenv("QUALITY_DB_URL", UNREACHABLE)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(page).run()
    assert not at.exception
    assert "Cannot reach the database" in _texts(at)
