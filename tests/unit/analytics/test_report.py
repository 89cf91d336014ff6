"""The HTML report, the run files it reads, the `quantmesh report` command, and Chromium."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from quantmesh.cli.report import report
from quantmesh.services.analytics.ledger import Fill, Mark, Side
from quantmesh.services.analytics.performance import analyse
from quantmesh.services.analytics.report import PLOT_IDS, render_report
from quantmesh.services.analytics.runs import Account, Run, demo_run, load_run, save_run

CHROMIUM = Path("/usr/bin/chromium")
T0 = 1_500_000_000_000
HOUR = 3_600_000


class Page(HTMLParser):
    """What the tests look at in a page: tags, ids, svg titles, table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.svg_titles: dict[str, str] = {}
        self.cells: dict[str, list[str]] = {}  # table id → its cell texts
        self._svg: str | None = None
        self._table: str | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "svg" and attributes.get("id") in PLOT_IDS:
            self._svg = attributes.get("id")
        if tag == "table":
            self._table = attributes.get("id") or ""
            self.cells[self._table] = []
        self._in_title = tag == "title" and self._svg is not None

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg = None
        if tag == "table":
            self._table = None
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title and self._svg is not None:
            self.svg_titles[self._svg] = self.svg_titles.get(self._svg, "") + data
        elif self._table is not None and data.strip():
            self.cells[self._table].append(data.strip())

    def ids(self) -> list[str]:
        return [value for _, a in self.tags if (value := a.get("id"))]


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def small_run(account_id: str = "paper-1") -> Run:
    """Two EURUSD trades (one by each of two models) and one open position, hourly marks."""

    def fill(position: str, side: Side, opens: bool, hour: int, version: str) -> Fill:
        points = 110_000 + 10 * hour
        points -= 0 if side is Side.BUY else 12
        return Fill(f"o-{position}-{hour}", position, "EURUSD", side, Decimal("0.10"), points,
                    5, Decimal("0.35"), T0 + hour * HOUR, opens, "model", version,
                    f"s-{position}")  # fmt: skip

    fills = (
        fill("p1", Side.BUY, True, 1, "1"),
        fill("p1", Side.SELL, False, 5, "1"),
        fill("p2", Side.SELL, True, 6, "2"),
        fill("p2", Side.BUY, False, 9, "2"),
        fill("p3", Side.BUY, True, 10, "1"),
    )
    marks = tuple(
        Mark("EURUSD", T0 + h * HOUR, 110_000 + 10 * h - 12, 110_000 + 10 * h, 5) for h in range(12)
    )
    return Run(Account(account_id, "USD", Decimal("1000")), fills, marks)


@pytest.fixture(scope="module")
def demo_html() -> str:
    run = demo_run()
    return render_report(run, analyse(run), source="demo")


def test_report_has_the_three_plots_as_inline_svg_with_ids_and_titles(demo_html: str) -> None:
    page = parse(demo_html)
    svgs = [a.get("id") for tag, a in page.tags if tag == "svg"]
    assert svgs == ["plot-equity", "plot-drawdown", "plot-trades"]
    assert page.svg_titles == {
        "plot-equity": "Equity (USD)",
        "plot-drawdown": "Drawdown from the running peak",
        "plot-trades": "Trades on the EURUSD price",
    }
    # The trades plot draws the price line and entry and exit markers.
    trades_svg = demo_html[demo_html.index('id="plot-trades"') :]
    assert trades_svg.count("<use") > 600  # one marker per fill (642 in the demo)


def test_report_has_the_overall_and_per_model_metric_tables(demo_html: str) -> None:
    page = parse(demo_html)
    overall = " ".join(page.cells["metrics-overall"])
    for label in (
        "Realized PnL", "Unrealized PnL", "Commission", "Equity", "Max drawdown",
        "Sharpe, daily, ×√252", "Sharpe, hourly", "Win rate", "Profit factor",
        "Average win / average loss", "Expectancy", "Trades (closed positions)", "Hit rate",
    ):  # fmt: skip
        assert label in overall
    models = page.cells["metrics-models"]
    assert models[:3] == ["metric", "ema-cross 10-30", "ema-cross 20-60"]
    assert "hit rate of directional calls" in models
    assert {"open-positions", "trades"} <= set(page.cells)


def test_report_is_self_contained_with_no_script_and_no_url(demo_html: str) -> None:
    page = parse(demo_html)
    tags = {tag for tag, _ in page.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed"}
    assert not any("src" in attributes for _, attributes in page.tags)
    assert "http" not in demo_html
    assert "@import" not in demo_html
    assert set(re.findall(r"url\((.)", demo_html)) <= {"#"}  # only the page's own clip paths


def test_every_element_id_in_the_report_is_unique(demo_html: str) -> None:
    ids = parse(demo_html).ids()
    assert len(ids) == len(set(ids))
    refs = set(re.findall(r'href="#([^"]+)"', demo_html))
    refs |= set(re.findall(r"url\(#([^)]+)\)", demo_html))
    assert refs <= set(ids)  # every internal reference resolves


def test_report_renders_the_same_bytes_for_the_same_run() -> None:
    run = small_run()
    assert render_report(run) == render_report(run)


def test_report_escapes_text_from_the_run() -> None:
    html = render_report(small_run("<script>alert(1)</script>"))
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_report_of_a_run_without_fills_renders_empty_tables() -> None:
    run = small_run()
    page = parse(render_report(Run(run.account, (), run.marks)))
    assert page.svg_titles.keys() == set(PLOT_IDS)
    assert "none" in page.cells["trades"]


@pytest.mark.parametrize("name", ["run.json", "run.sqlite"])
def test_run_files_round_trip_exactly(tmp_path: Path, name: str) -> None:
    run = small_run()
    save_run(run, tmp_path / name)
    assert load_run(tmp_path / name) == run


def test_json_run_file_is_the_documented_format(tmp_path: Path) -> None:
    save_run(small_run(), tmp_path / "run.json")
    document = json.loads((tmp_path / "run.json").read_text())
    assert document["account"] == {"account_id": "paper-1", "currency": "USD",
                                   "start_balance": "1000"}  # fmt: skip
    assert document["fills"][0] == {
        "order_id": "o-p1-1", "position_id": "p1", "symbol": "EURUSD", "side": "BUY",
        "volume_lots": "0.10", "price_points": 110_010, "digits": 5, "commission": "0.35",
        "time_ms": T0 + HOUR, "opens": True, "model_name": "model", "model_version": "1",
        "signal_id": "s-p1",
    }  # fmt: skip
    assert document["marks"][0] == {"symbol": "EURUSD", "time_ms": T0, "bid_points": 109_988,
                                    "ask_points": 110_000, "digits": 5}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"volume_lots": 0.1}, r"fills\[0\]\.volume_lots must be a decimal string"),
        ({"side": "LONG"}, r"fills\[0\]\.side must be BUY or SELL"),
        ({"opens": "yes"}, r"fills\[0\]\.opens must be true or false"),
        ({"price_points": "110000"}, r"fills\[0\]\.price_points must be an integer"),
        ({"commission": "-1"}, "commission is a cost"),
    ],
)
def test_load_run_names_the_bad_record(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    save_run(small_run(), tmp_path / "run.json")
    document = json.loads((tmp_path / "run.json").read_text())
    document["fills"][0].update(change)
    (tmp_path / "run.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match=message):
        load_run(tmp_path / "run.json")


def test_load_run_reads_sqlite_by_its_header_whatever_the_name(tmp_path: Path) -> None:
    save_run(small_run(), tmp_path / "run.db")
    shutil.copy(tmp_path / "run.db", tmp_path / "fills.bin")
    assert load_run(tmp_path / "fills.bin") == small_run()
    with sqlite3.connect(tmp_path / "run.db") as db:
        db.execute("DELETE FROM account")
    with pytest.raises(ValueError, match="exactly one row"):
        load_run(tmp_path / "run.db")


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("report")(report)
    app.command("other")(lambda: None)  # two commands, so `report` stays a subcommand
    return app


def test_cli_report_writes_one_html_file_from_a_run_file(tmp_path: Path) -> None:
    save_run(small_run(), tmp_path / "run.json")
    out = tmp_path / "out" / "report.html"
    result = CliRunner().invoke(cli(), ["report", str(tmp_path / "run.json"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in "".join(result.output.splitlines())
    assert parse(out.read_text()).svg_titles.keys() == set(PLOT_IDS)


def test_cli_report_demo_writes_the_report_and_can_save_its_run(tmp_path: Path) -> None:
    out, saved = tmp_path / "report.html", tmp_path / "demo.sqlite"
    args = ["report", "--demo", "-o", str(out), "--save-run", str(saved)]
    result = CliRunner().invoke(cli(), args)
    assert result.exit_code == 0, result.output
    assert "ema-cross 10-30" in result.output
    assert out.stat().st_size > 100_000
    assert len(load_run(saved).fills) == len(demo_run().fills)


def test_cli_report_needs_exactly_one_source_and_explains_a_bad_file(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli(), ["report"]).exit_code == 2
    (tmp_path / "bad.json").write_text("[]")
    result = runner.invoke(cli(), ["report", str(tmp_path / "bad.json")])
    assert result.exit_code == 1
    assert "bad.json: the top level must be an object" in " ".join(result.output.split())


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian: apt-get install chromium)"
)
def test_report_opens_in_headless_chromium(demo_html: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(demo_html, encoding="utf-8")
    base = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    dom = subprocess.run(
        [*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = parse(dom.stdout)
    assert rendered.svg_titles.keys() == set(PLOT_IDS)
    assert {"metrics-overall", "metrics-models"} <= set(rendered.cells)
    shot = tmp_path / "r.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri()],
        capture_output=True,
        timeout=90,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a blank page of this size is a few KB
