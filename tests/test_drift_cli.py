"""`quality drift`: exit codes, --json, the rich alert table, the monitoring report files.

Runs on the small demo in place (read-only), where the seeded drift at east_imaging and the
missing-predictions stretch make alerts fire, and a quiet week before both does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quality.cli import app

runner = CliRunner()
QUIET = "2024-02-26:2024-03-03"  # after the missing stretch, before the drift


@pytest.fixture(scope="module")
def demo_url(small_demo_dir: Path) -> str:
    return f"sqlite:///{small_demo_dir / 'demo.db'}"


def test_alerts_exit_1_with_json(demo_url: str) -> None:
    res = runner.invoke(app, ["drift", "chest-xray-demo", "--db", demo_url, "--json"])
    assert res.exit_code == 1, res.output
    payload = json.loads(res.stdout)
    assert payload["alerted"] and payload["dataset"] == "chest-xray-demo"
    assert payload["reference"] == ["2024-01-08", "2024-02-04"]
    assert payload["n_alerts"]["drift"] > 0 and payload["n_alerts"]["missing_input"] > 0
    scopes = {a["scope"] for a in payload["alerts"] if a["kind"] == "drift"}
    assert "east_imaging" in scopes
    assert {t["column"] for t in payload["tests"]} >= {"kvp", "software_version", "score:v1"}


def test_quiet_period_exits_0(demo_url: str) -> None:
    res = runner.invoke(app, ["drift", "chest-xray-demo", "--db", demo_url, "--current", QUIET])
    assert res.exit_code == 0, res.output
    assert "no alert" in res.stdout
    assert "1 windows of 7 d" in res.stdout


def test_human_output_is_a_table_of_alerts(demo_url: str) -> None:
    res = runner.invoke(
        app,
        ["drift", "chest-xray-demo", "--db", demo_url, "--current", "2024-03-18:2024-03-24"],
        env={"COLUMNS": "200"},
    )
    assert res.exit_code == 1
    assert "Alerts" in res.stdout and "east_imaging" in res.stdout and "kvp" in res.stdout


def test_options_reach_the_monitor(demo_url: str) -> None:
    res = runner.invoke(
        app,
        ["drift", "all", "--db", demo_url, "--current", QUIET, "--window", "1W", "--by", "none",
         "--test", "kvp=psi", "--alpha", "0.01", "--json"],
    )  # fmt: skip
    assert res.exit_code in (0, 1), res.output
    payload = json.loads(res.stdout)
    assert payload["dataset"] is None and payload["by"] is None and payload["alpha"] == 0.01
    assert payload["scopes"] == ["(all)"] and payload["window_days"] == 7
    kvp = next(t for t in payload["tests"] if t["column"] == "kvp")
    assert (kvp["test"], kvp["chosen_by"]) == ("psi", "override")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reference", "2024-02-30:"], "--reference"),
        (["--current", "2024-03-01"], "START:END"),
        (["--window", "a week"], "--window"),
        (["--test", "kvp=student"], "valid names: chisquare, jensenshannon, ks, psi"),
        (["--test", "kvP=ks"], "no feature"),
        (["--report", "pdf"], "md or html"),
        (["--reference", "2030-01-01:2030-02-01"], "no image between"),
        (["--by", "vendor"], "--by"),
    ],
)
def test_bad_input_exits_2(demo_url: str, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["drift", "chest-xray-demo", "--db", demo_url, *args])
    assert res.exit_code == 2, res.output
    assert message in " ".join(res.stderr.split())


def test_unknown_dataset_exits_2(demo_url: str) -> None:
    res = runner.invoke(app, ["drift", "no-such-set", "--db", demo_url])
    assert res.exit_code == 2
    assert "chest-xray-demo" in res.stderr


@pytest.mark.parametrize("fmt", ["md", "html"])
def test_monitoring_report_file(demo_url: str, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"report.{fmt}"
    res = runner.invoke(
        app,
        ["drift", "chest-xray-demo", "--db", demo_url, "--report", fmt, "--out", str(out),
         "--period", "8h", "--current", "2024-02-20:2024-02-21", "--json"],
    )  # fmt: skip
    assert res.exit_code == 1, res.output  # the empty and missing v1 predictions
    payload = json.loads(res.stdout)
    assert payload == {"report": str(out), "format": fmt, "alerted": True, "n_alerts": 2}
    text = out.read_text(encoding="utf-8")
    assert "missing:v1" in text and "empty:v1" in text
    assert "2024-02-20 08:00" in text  # 8-hour periods
    if fmt == "html":
        assert text.startswith("<!DOCTYPE html>") and "http" not in text


def test_monitoring_report_to_stdout_quiet(demo_url: str) -> None:
    res = runner.invoke(
        app, ["drift", "chest-xray-demo", "--db", demo_url, "--report", "md", "--current", QUIET]
    )
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("# Monitoring report: chest-xray-demo (v1)")
    assert "**Status: OK: no alert**" in res.stdout
