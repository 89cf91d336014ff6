"""The HTML performance report: one self-contained file, plots as inline SVG.

The page needs no server and no network: the three plots (equity, drawdown, trades on
price) are SVG from matplotlib's SVG writer (no GUI backend, no pyplot state), with text as
``<text>`` (``svg.fonttype='none'``), and the styles sit in one ``<style>`` element. It holds no
script, no external font, stylesheet or image, and no URL at all. Element ids, for
tools and tests: ``plot-equity``, ``plot-drawdown``, ``plot-trades`` (the ``<svg>``
elements, each with a ``<title>``), ``metrics-overall``, ``metrics-models``,
``open-positions`` and ``trades`` (tables).
"""

from __future__ import annotations

import html
import io
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING, Any

import numpy as np

from quantmesh.services.analytics.performance import (
    DAILY_PERIODS_PER_YEAR,
    Analysis,
    DrawdownEpisode,
    Performance,
    analyse,
    drawdown_series,
)
from quantmesh.services.analytics.runs import Run

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

__all__ = ["PLOT_IDS", "render_report"]

PLOT_IDS = ("plot-equity", "plot-drawdown", "plot-trades")
_CENT = Decimal("0.01")


def render_report(
    run: Run,
    analysis: Analysis | None = None,
    *,
    title: str = "quantmesh performance report",
    source: str = "",
    generated_time_ms: int | None = None,
    price_symbol: str | None = None,
) -> str:
    """The report of ``run`` as one self-contained HTML document.

    Parameters
    ----------
    run:
        The fills and marks (the price plot draws the marks' bid).
    analysis:
        ``analyse(run)``, computed here when not given.
    title, source:
        Page title, and a line saying where the run came from.
    generated_time_ms:
        Printed as the generation time; omitted when None, so the same run renders the
        same bytes.
    price_symbol:
        Symbol of the trades-on-price plot; by default the one with most fills.
    """
    analysis = analysis or analyse(run)
    overall = analysis.overall
    symbols = Counter(f.symbol for f in run.fills) or Counter(m.symbol for m in run.marks)
    symbol = price_symbol or (symbols.most_common(1)[0][0] if symbols else "")
    meta = [
        f"account <b>{_e(run.account.account_id)}</b> ({_e(run.account.currency)})",
        f"{_time(overall.start_time_ms)} → {_time(overall.end_time_ms)}",
        f"{len(run.fills):,} fills, {len(run.marks):,} marks",
    ]
    if source:
        meta.append(f"source: {_e(source)}")
    if generated_time_ms is not None:
        meta.append(f"generated {_time(generated_time_ms)}")
    plots = _plots(run, analysis, symbol)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
            f"<h1>{_e(title)}</h1><p class='meta'>{' · '.join(meta)}</p>",
            "<section><h2>Overall</h2>",
            _overall_table(overall),
            "</section><section><h2>Equity</h2>",
            plots[0],
            "<h2>Drawdown</h2>",
            plots[1],
            f"<h2>Trades on price ({_e(symbol)})</h2>",
            plots[2],
            "</section><section><h2>Per model</h2>",
            _models_table(analysis),
            "</section><section><h2>Open positions</h2>",
            _open_table(analysis),
            f"<h2>Trades</h2><details><summary>{overall.trades.count:,} closed trades</summary>",
            _trades_table(analysis),
            "</details></section>",
            _DEFINITIONS,
            "</main></body></html>",
        ]
    )


# --- plots -----------------------------------------------------------------------------


def _plots(run: Run, analysis: Analysis, symbol: str) -> list[str]:
    # Imported here: matplotlib costs half a second, which only rendering should pay.
    import matplotlib as mpl

    style: dict[RcKeyType, Any] = {
        "svg.fonttype": "none",  # text stays text: no embedded glyphs, no font files
        "svg.hashsalt": "quantmesh",  # stable clip-path ids: the same run, the same page
        "date.converter": "concise",  # compact date ticks
        "font.size": 9.0,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
    }
    currency = run.account.currency
    with mpl.rc_context(style):
        return [
            _svg(_equity_figure(analysis, currency), PLOT_IDS[0], f"Equity ({currency})"),
            _svg(_drawdown_figure(analysis), PLOT_IDS[1], "Drawdown from the running peak"),
            _svg(_trades_figure(run, symbol), PLOT_IDS[2], f"Trades on the {symbol} price"),
        ]


def _equity_figure(analysis: Analysis, currency: str) -> Figure:
    from matplotlib.figure import Figure

    curve, overall = analysis.ledger.curve, analysis.overall
    times = np.array(curve.time_ms, dtype="datetime64[ms]")
    fig = Figure(figsize=(11, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(times, [float(v) for v in curve.balance], color="#9aa5b1", lw=1, label="balance")
    ax.plot(times, [float(v) for v in curve.equity], color="#1f5fbf", lw=1.2, label="equity")
    ax.axhline(float(overall.start_balance), color="#555", lw=0.8, ls="--", label="start")
    episode = overall.max_drawdown
    if episode is not None:
        ax.plot(
            np.array([episode.peak_time_ms, episode.trough_time_ms], dtype="datetime64[ms]"),
            [float(episode.peak_equity), float(episode.trough_equity)],
            "o", color="#c0392b", ms=4, label="max drawdown peak/trough",
        )  # fmt: skip
    ax.set_ylabel(currency)
    _finish(ax)
    return fig


def _drawdown_figure(analysis: Analysis) -> Figure:
    from matplotlib.figure import Figure

    curve, worst = analysis.ledger.curve, analysis.overall.max_relative_drawdown
    times = np.array(curve.time_ms, dtype="datetime64[ms]")
    _, fractions = drawdown_series(curve.equity)
    fig = Figure(figsize=(11, 2.4), layout="constrained")
    ax = fig.add_subplot()
    # matplotlib does not simplify filled polygons: fill only the deepest point of each of
    # ~1,500 bins (about a pixel each), which keeps the shape and the page small.
    step = max(1, len(fractions) // 1_500)
    deepest = [k + int(np.argmax(fractions[k : k + step])) for k in range(0, len(fractions), step)]
    ax.fill_between(times[deepest], -100 * fractions[deepest], 0, color="#c0392b", alpha=0.3, lw=0)
    ax.plot(times, -100 * fractions, color="#c0392b", lw=0.8, label="drawdown")
    if worst is not None:
        trough = np.datetime64(worst.trough_time_ms, "ms")
        ax.plot([trough], [-100 * worst.fraction], "v", color="#7b1d12", label="maximum")
    ax.set_ylabel("% below peak")
    _finish(ax)
    return fig


def _trades_figure(run: Run, symbol: str) -> Figure:
    from matplotlib.figure import Figure

    marks = [m for m in run.marks if m.symbol == symbol]
    fills = [f for f in run.fills if f.symbol == symbol]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax = fig.add_subplot()
    scale = 10.0 ** -(marks[0].digits if marks else 5)
    ax.plot(
        np.array([m.time_ms for m in marks], dtype="datetime64[ms]"),
        [m.bid_points * scale for m in marks],
        color="#666",
        lw=0.7,
        label=f"{symbol} bid",
    )
    styles = {
        (True, 1): ("^", "#1e8449", "buy entry"),
        (True, 2): ("v", "#c0392b", "sell entry"),
        (False, 1): ("o", "#c0392b", "exit (buy back)"),
        (False, 2): ("o", "#1e8449", "exit (sell)"),
    }
    for (opens, side), (marker, color, label) in styles.items():
        chosen = [f for f in fills if f.opens is opens and int(f.side) == side]
        if not chosen:
            continue
        ax.plot(
            np.array([f.time_ms for f in chosen], dtype="datetime64[ms]"),
            [f.price_points * 10.0**-f.digits for f in chosen],
            marker,
            ms=4 if opens else 3,
            color=color,
            mfc=color if opens else "none",
            ls="none",
            label=label,
        )
    ax.set_ylabel("price")
    _finish(ax)
    return fig


def _finish(ax: Axes) -> None:
    ax.margins(x=0.01)
    ax.legend(loc="best", fontsize=8, frameon=False, ncols=5)


def _svg(fig: Figure, element_id: str, title: str) -> str:
    """The figure as an inline ``<svg>`` with ``element_id``, a ``<title>``, unique ids."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    # Three plots share one page, so prefix every internal id and reference to it.
    text = re.sub(r'\bid="([^"]+)"', rf'id="{element_id}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{element_id}-\1)", text)
    text = re.sub(r'xlink:href="#([^"]+)"', rf'href="#{element_id}-\1"', text)
    # HTML puts <svg> in the SVG namespace itself; dropping xmlns leaves no URL in the page.
    text = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text)
    head, rest = text.split(">", 1)
    head = head.replace("<svg", f'<svg id="{element_id}" role="img" class="plot"', 1)
    label = f'<title id="{element_id}-title">{_e(title)}</title>'
    return f'{head} aria-labelledby="{element_id}-title">{label}{rest}'


# --- tables ----------------------------------------------------------------------------


def _overall_table(p: Performance) -> str:
    t = p.trades
    rows = [
        ("Start balance", _money(p.start_balance)),
        ("Realized PnL (gross, partial closes included)", _money(p.realized_pnl)),
        ("Commission", _money(-p.commission)),
        ("Unrealized PnL of open positions", _money(p.unrealized_pnl)),
        ("Balance (start + realized − commission)", _money(p.balance)),
        ("Equity (balance + unrealized)", _money(p.equity)),
        ("Net PnL (equity − start)", f"{_money(p.net_pnl)} ({_pct(p.return_fraction)})"),
        ("Drawdown at the end", f"{_money(-p.drawdown)} ({_pct(-p.drawdown_fraction)})"),
        *_drawdown_rows(p),
        (f"Sharpe, daily, ×√{DAILY_PERIODS_PER_YEAR}", f"{_num(p.sharpe)} ({p.trading_days} days)"),
        ("Sharpe, hourly, ×√(24·260)", _num(p.sharpe_hourly)),
        ("Trades (closed positions)", f"{t.count:,} ({t.winning:,} won, {t.losing:,} lost)"),
        ("Win rate", _pct(t.win_rate)),
        ("Hit rate of directional calls", f"{_pct(t.hit_rate)} ({t.hits:,} of {t.count:,})"),
        ("Profit factor", _ratio(t.profit_factor)),
        ("Gross profit / gross loss", f"{_money(t.gross_profit)} / {_money(-t.gross_loss)}"),
        ("Average win / average loss", f"{_money(t.average_win)} / {_money(t.average_loss)}"),
        ("Expectancy (net per trade)", _money(t.expectancy)),
    ]
    body = "".join(f"<tr><th scope='row'>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table id='metrics-overall' class='kv'><tbody>{body}</tbody></table>"


def _models_table(analysis: Analysis) -> str:
    # One column per model, metrics down the side: models are few, metrics many.
    rows: list[tuple[str, list[str]]] = [
        ("trades", []), ("win rate", []), ("hit rate of directional calls", []),
        ("profit factor", []), ("average win", []), ("average loss", []), ("expectancy", []),
        ("realized PnL (gross)", []), ("commission", []), ("unrealized PnL", []),
        ("net PnL (equity − start)", []), ("max drawdown", []), ("Sharpe, daily", []),
        ("Sharpe, hourly", []),
    ]  # fmt: skip
    for model in analysis.models:
        p, t = model.performance, model.performance.trades
        worst = p.max_relative_drawdown
        values = [
            f"{t.count:,}",
            _pct(t.win_rate),
            f"{_pct(t.hit_rate)} ({t.hits:,})",
            _ratio(t.profit_factor),
            _money(t.average_win),
            _money(t.average_loss),
            _money(t.expectancy),
            _money(p.realized_pnl),
            _money(-p.commission),
            _money(p.unrealized_pnl),
            f"{_money(p.net_pnl)} ({_pct(p.return_fraction)})",
            "–" if worst is None else f"{_money(-worst.amount)} ({_pct(-worst.fraction)})",
            _num(p.sharpe),
            _num(p.sharpe_hourly),
        ]
        for (_, cells), value in zip(rows, values, strict=True):
            cells.append(value)
    names = [f"{m.model_name or '(no model)'} {m.model_version}".strip() for m in analysis.models]
    return _table("metrics-models", ["metric", *names], [[_e(k), *v] for k, v in rows])


def _open_table(analysis: Analysis) -> str:
    rows = [
        [
            _e(p.position_id), _e(p.symbol), p.side.name, f"{p.volume_lots}",
            f"{p.entry_price:.6g}", _time(p.open_time_ms), _money(p.unrealized_pnl),
            _e(f"{p.model_name} {p.model_version}".strip()),
        ]
        for p in analysis.ledger.open_positions
    ]  # fmt: skip
    columns = ("position", "symbol", "side", "lots", "entry", "opened", "unrealized", "model")
    return _table("open-positions", columns, rows)


def _trades_table(analysis: Analysis) -> str:
    rows = [
        [
            _e(t.position_id), _e(t.symbol), t.side.name, f"{t.volume_lots}",
            _time(t.open_time_ms), f"{t.entry_price:.6g}", _time(t.close_time_ms),
            f"{t.exit_price:.6g}", _money(t.gross_pnl), _money(-t.commission),
            _money(t.net_pnl), "yes" if t.direction_hit else "no",
            _e(f"{t.model_name} {t.model_version}".strip()),
        ]
        for t in analysis.ledger.trades
    ]  # fmt: skip
    columns = (
        "position", "symbol", "side", "lots", "opened", "entry", "closed", "exit", "gross",
        "commission", "net", "hit", "model",
    )  # fmt: skip
    return _table("trades", columns, rows)


def _drawdown_rows(p: Performance) -> list[tuple[str, str]]:
    if p.max_drawdown == p.max_relative_drawdown:  # usually one episode is both
        return [("Max drawdown", _episode(p.max_drawdown))]
    return [
        ("Max drawdown (amount)", _episode(p.max_drawdown)),
        ("Max drawdown (% of peak)", _episode(p.max_relative_drawdown)),
    ]


def _table(table_id: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th scope='col'>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not rows:
        body = f"<tr><td colspan='{len(columns)}'>none</td></tr>"
    return f"<table id='{table_id}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- formatting ------------------------------------------------------------------------


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _money(value: Decimal) -> str:
    cents = value.quantize(_CENT, ROUND_HALF_EVEN)
    text = f"{abs(cents):,.2f}"
    return f"<span class='neg'>−{text}</span>" if cents < 0 else text


def _pct(fraction: float) -> str:
    text = f"{abs(100 * fraction):.2f} %"
    return f"<span class='neg'>−{text}</span>" if fraction < 0 else text


def _num(value: float) -> str:
    text = f"{abs(value):.2f}"
    return f"<span class='neg'>−{text}</span>" if value < 0 else text


def _ratio(value: float) -> str:
    return "∞" if value == float("inf") else f"{value:.2f}"


def _time(time_ms: int | None) -> str:
    if not time_ms:
        return "–"
    return datetime.fromtimestamp(time_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _episode(episode: DrawdownEpisode | None) -> str:
    if episode is None:
        return "none"
    recovered = _time(episode.recovery_time_ms) if episode.recovery_time_ms else "not yet"
    return (
        f"{_money(-episode.amount)} ({_pct(-episode.fraction)}): peak "
        f"{_time(episode.peak_time_ms)}, trough {_time(episode.trough_time_ms)}, "
        f"recovered {recovered}"
    )


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1c2430;
margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px;background:#fff}
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:22px 0 6px}
.meta{color:#5b6673;margin:0 0 8px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:4px 0 8px}
th,td{padding:3px 10px;border-bottom:1px solid #e3e6ea;text-align:right;white-space:nowrap}
th{background:#f0f2f5}.kv th{text-align:left;font-weight:500;background:none}
td:first-child,thead th:first-child{text-align:left}
.neg{color:#b3261e}svg.plot{width:100%;height:auto;display:block}
details summary{cursor:pointer;margin:4px 0}dt{font-weight:600;margin-top:6px}dd{margin-left:16px}
"""

_DEFINITIONS = f"""<section id="definitions"><h2>Definitions</h2><dl>
<dt>Money</dt><dd>Exact decimals in the account currency, rounded to the cent for display.
Realized PnL is gross of commission; equity = start + realized + unrealized − commission.
Open positions are marked at the latest bid (long) or ask (short).</dd>
<dt>Trade</dt><dd>One closed position. It wins when its net PnL (after commission) is
positive; break-even counts as a loss.</dd>
<dt>Win rate, profit factor, averages, expectancy</dt><dd>Winners / trades; gross profit of
winners / gross loss of losers (∞ without losers); mean net PnL of winners and of losers;
mean net PnL per trade.</dd>
<dt>Hit rate</dt><dd>Share of trades where the mid price moved the called way between the
marks at entry and exit: the model's call, without spread or commission.</dd>
<dt>Drawdown</dt><dd>Running peak of equity minus equity, also as % of that peak; the maximum
with the times of its peak, trough and recovery.</dd>
<dt>Sharpe</dt><dd>Mean / sample standard deviation of equity returns, risk-free rate 0.
Daily: returns between the closes of FX trading days (17:00 New York), ×√{DAILY_PERIODS_PER_YEAR}.
Hourly: returns between UTC hours with a price, ×√(24·260).</dd>
<dt>Per model</dt><dd>Trades grouped by the model name and version of the fill that opened
them; each model's fills are replayed alone from the same start balance.</dd>
</dl></section>"""
