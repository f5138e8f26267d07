"""`mmops report [--since DATE] [--session ID]`: profitability from the migrated sessions.

Per pair: round trips, win rate, realized P&L, fees, average spread. Portfolio: the
daily P&L table (UTC days), its maximum drawdown and its Sharpe ratio.

Definitions (docs/queries.sql has the same ones for analysts):
* a round trip is one sell applied to one position; a win is one with P&L > 0;
* average spread: mean over round trips of (sell price - unit cost) / unit cost, unit
  cost including the buy fees (sessions weighted by their round trips);
* daily P&L: realized P&L of the sell fills, by the UTC day of the fill; every calendar
  day from the first to the last such day counts, a day without sells as 0;
* max drawdown: the largest fall of cumulative daily P&L from a previous peak (from 0);
* Sharpe: mean / sample standard deviation of daily P&L x sqrt(365); n/a with fewer
  than 2 days or no variation.

A session's figures include its fills after its end (TPs that filled later: the migrator
keeps PostgreSQL in step). Its P&L is final only once it is closed (`closed_at`: no
position open, no TP live); until then the per-session table says FINAL no and the totals
are marked provisional.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal

import asyncpg

from base.settings import Settings
from mmops import runner
from mmops.reporting import render_table
from storage import postgres

ZERO = Decimal(0)
_EXACT = Context(prec=50)
MONEY = Decimal("0.0001")
SESSION_ROWS = 20  # newest sessions listed


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser(
        "report",
        help="per-pair and portfolio profitability from the migrated sessions",
        description="Tables from PostgreSQL: per pair (round trips, win rate, realized P&L, fees, "
        "average spread) and portfolio (daily P&L, max drawdown, Sharpe of daily P&L x sqrt(365)).",
    )
    cmd.add_argument(
        "--since",
        type=_date,
        metavar="YYYY-MM-DD",
        help="only sessions that ended on or after this UTC day",
    )
    cmd.add_argument("--session", metavar="ID", help="only this session")
    cmd.set_defaults(func=_report)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _report(args: argparse.Namespace) -> int:
    async def main(settings: Settings) -> int:
        conn = await postgres.connect(settings.database_url)
        try:
            report = await build(conn, since=args.since, session=args.session)
        finally:
            await conn.close()
        print(render(report))
        return 0

    return runner.run(main)


# --- figures ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PairLine:
    symbol: str
    round_trips: int
    wins: int
    pnl: Decimal
    fees: Decimal
    avg_spread: Decimal | None
    fills: int

    @property
    def win_rate(self) -> Decimal | None:
        return Decimal(self.wins) / self.round_trips if self.round_trips else None


@dataclass(frozen=True, slots=True)
class SessionLine:
    session_id: str
    ended_at: dt.datetime | None
    closed_at: dt.datetime | None
    fills: int
    after_end: int  # fills whose time is after the session's end
    pnl: Decimal

    @property
    def final(self) -> bool:
        return self.closed_at is not None


@dataclass(frozen=True, slots=True)
class Report:
    scope: str
    sessions: int
    pairs: list[PairLine]
    days: list[tuple[dt.date, Decimal]]  # every calendar day from the first to the last
    session_lines: list[SessionLine] = field(default_factory=list)  # newest first
    provisional: int = 0  # sessions in scope not closed yet: their P&L may still change

    @property
    def max_drawdown(self) -> tuple[Decimal, dt.date | None]:
        return max_drawdown(self.days)

    @property
    def sharpe(self) -> Decimal | None:
        return sharpe([pnl for _, pnl in self.days])


_SCOPE = (
    "s.migrated_at IS NOT NULL AND ($1::timestamptz IS NULL OR s.ended_at >= $1)"
    " AND ($2::text IS NULL OR s.id = $2)"
)


async def build(
    conn: asyncpg.Connection, *, since: dt.date | None = None, session: str | None = None
) -> Report:
    start = dt.datetime.combine(since, dt.time(), tzinfo=dt.UTC) if since else None
    sessions = await conn.fetchval(
        f"SELECT count(*) FROM sessions s WHERE {_SCOPE}", start, session
    )
    pairs = [
        PairLine(
            r["symbol"],
            r["round_trips"],
            r["wins"],
            r["pnl"],
            r["fees"],
            r["avg_spread"],
            r["fills"],
        )
        for r in await conn.fetch(
            f"""SELECT sp.symbol, sum(sp.round_trips)::int AS round_trips,
                       sum(sp.wins)::int AS wins, sum(sp.total_pnl) AS pnl,
                       sum(sp.total_fees) AS fees,
                       sum(sp.avg_spread * sp.round_trips) / nullif(sum(sp.round_trips), 0)
                           AS avg_spread,
                       sum(sp.total_fills)::int AS fills
                FROM session_pairs sp JOIN sessions s ON s.id = sp.session_id
                WHERE {_SCOPE}
                GROUP BY sp.symbol HAVING sum(sp.total_fills) > 0
                ORDER BY sum(sp.total_pnl) DESC, sp.symbol""",
            start,
            session,
        )
    ]
    daily = {
        r["day"]: r["pnl"]
        for r in await conn.fetch(
            f"""SELECT (f.timestamp AT TIME ZONE 'UTC')::date AS day, sum(f.realized_pnl) AS pnl
                FROM fills f JOIN sessions s ON s.id = f.session_id
                WHERE f.realized_pnl IS NOT NULL AND {_SCOPE}
                GROUP BY 1 ORDER BY 1""",
            start,
            session,
        )
    }
    days: list[tuple[dt.date, Decimal]] = []
    if daily:
        day, last = min(daily), max(daily)
        while day <= last:
            days.append((day, daily.get(day, ZERO)))
            day += dt.timedelta(days=1)
    counts = await conn.fetchrow(
        f"""SELECT (count(*) FILTER (WHERE s.closed_at IS NULL))::int AS provisional
            FROM sessions s WHERE {_SCOPE}""",
        start,
        session,
    )
    session_lines = [
        SessionLine(
            r["id"], r["ended_at"], r["closed_at"], r["total_fills"], r["after_end"], r["total_pnl"]
        )
        for r in await conn.fetch(
            f"""SELECT s.id, s.ended_at, s.closed_at, s.total_fills, s.total_pnl,
                       (SELECT count(*) FROM fills f
                        WHERE f.session_id = s.id AND f.timestamp > s.ended_at)::int AS after_end
                FROM sessions s WHERE {_SCOPE}
                ORDER BY s.ended_at DESC NULLS LAST, s.id LIMIT $3""",
            start,
            session,
            SESSION_ROWS,
        )
    ]
    scope = (
        f"session {session}"
        if session
        else f"sessions ended since {since}"
        if since
        else "all sessions"
    )
    return Report(
        scope,
        int(sessions),
        pairs,
        days,
        session_lines,
        int(counts["provisional"] if counts else 0),
    )


def max_drawdown(days: Sequence[tuple[dt.date, Decimal]]) -> tuple[Decimal, dt.date | None]:
    """The largest fall of cumulative P&L below its running peak (the peak starts at 0)."""
    peak = cumulative = worst = ZERO
    worst_day: dt.date | None = None
    for day, pnl in days:
        cumulative += pnl
        peak = max(peak, cumulative)
        if peak - cumulative > worst:
            worst, worst_day = peak - cumulative, day
    return worst, worst_day


def sharpe(values: Sequence[Decimal]) -> Decimal | None:
    """mean / sample stdev x sqrt(365); None with fewer than 2 values or no variation."""
    n = len(values)
    if n < 2:
        return None
    mean = _EXACT.divide(sum(values, ZERO), n)
    variance = _EXACT.divide(sum(((v - mean) ** 2 for v in values), ZERO), n - 1)
    if variance == 0:
        return None
    ratio = _EXACT.divide(mean, variance.sqrt(_EXACT)) * Decimal(365).sqrt(_EXACT)
    return ratio.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN, context=_EXACT)


# --- rendering -------------------------------------------------------------------------


def money(value: Decimal | None) -> str:
    if value is None:
        return "-"
    return f"{value.quantize(MONEY, rounding=ROUND_HALF_EVEN, context=_EXACT):,}"


def percent(value: Decimal | None, places: int = 1) -> str:
    if value is None:
        return "n/a"
    quantum = Decimal(1).scaleb(-places)
    return f"{(value * 100).quantize(quantum, rounding=ROUND_HALF_EVEN, context=_EXACT)}%"


def render(report: Report) -> str:
    plural = "" if report.sessions == 1 else "s"
    out = [f"mmops report: {report.scope} ({report.sessions} migrated session{plural})", ""]
    rows: list[list[object]] = [
        [
            p.symbol,
            p.round_trips,
            percent(p.win_rate),
            money(p.pnl),
            money(p.fees),
            percent(p.avg_spread, 3),
            p.fills,
        ]
        for p in report.pairs
    ]
    if report.pairs:
        trips = sum(p.round_trips for p in report.pairs)
        wins = sum(p.wins for p in report.pairs)
        spread_sum = sum(((p.avg_spread or ZERO) * p.round_trips for p in report.pairs), ZERO)
        rows.append(
            [
                "TOTAL (provisional)" if report.provisional else "TOTAL",
                trips,
                percent(Decimal(wins) / trips if trips else None),
                money(sum((p.pnl for p in report.pairs), ZERO)),
                money(sum((p.fees for p in report.pairs), ZERO)),
                percent(_EXACT.divide(spread_sum, trips) if trips else None, 3),
                sum(p.fills for p in report.pairs),
            ]
        )
    out.append("Per pair")
    out.append(
        render_table(
            ["PAIR", "ROUND TRIPS", "WIN RATE", "REALIZED P&L", "FEES", "AVG SPREAD", "FILLS"],
            rows,
            rule=True,
        )
    )
    if report.provisional:
        plural = "s" if report.provisional != 1 else ""
        out.append(
            f"P&L of {report.provisional} session{plural} not closed yet is provisional: "
            "TPs still live may fill (see FINAL below)"
        )
    out += ["", *_sessions(report)]
    out += ["", "Portfolio: daily P&L (UTC)"]
    cumulative = ZERO
    daily_rows: list[list[object]] = []
    for day, pnl in report.days:
        cumulative += pnl
        daily_rows.append([day.isoformat(), money(pnl), money(cumulative)])
    out.append(render_table(["DAY", "P&L", "CUMULATIVE"], daily_rows, rule=True))
    drawdown, on = report.max_drawdown
    sharpe_value = report.sharpe
    out += [
        "",
        f"Max drawdown: {money(drawdown)}" + (f" (on {on.isoformat()})" if on else ""),
        "Sharpe (daily P&L, mean / stdev x sqrt(365)): "
        + (str(sharpe_value) if sharpe_value is not None else "n/a (needs 2 days with variation)"),
    ]
    return "\n".join(out)


def _sessions(report: Report) -> list[str]:
    """The newest sessions: fills (after the end among them), P&L, and whether it is final."""
    shown = len(report.session_lines)
    head = "Per session (newest first; P&L final once the session is closed)"
    if report.sessions > shown:
        head += f": the {shown} newest of {report.sessions}"
    rows: list[list[object]] = [
        [
            s.session_id,
            _when(s.ended_at),
            _when(s.closed_at),
            s.fills,
            s.after_end,
            money(s.pnl),
            "yes" if s.final else "no (open)",
        ]
        for s in report.session_lines
    ]
    table = render_table(
        ["SESSION", "ENDED", "CLOSED", "FILLS", "AFTER END", "REALIZED P&L", "FINAL"],
        rows,
        rule=True,
    )
    return [head, table]


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
