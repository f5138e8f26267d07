"""`mmops sweep --once | --loop` and `mmops verify-coverage`.

`sweep --once` runs one sweeper pass (no lease: the per-session locks keep it from
colliding with a running sweeper) and prints one row per session (`--json`: the report
as JSON); exit 1 if the pass had errors. SIGTERM/SIGINT stop the pass between two
actions; what it did so far is printed. `sweep --loop` is the sweeper loop, like
`mmops sweeper`. One of the two must be given: a bare `mmops sweep` used to start the
endless loop silently (and ignore --json); now it stops with one line saying so.

`verify-coverage` prints, per session and pair, filled / covered / dust / uncovered
quantities and the age of the oldest uncovered position (since its last buy fill); exit 1
if any position has been uncovered longer than one SETTLEMENT_INTERVAL_MINUTES.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from base.settings import Settings
from mmops import runner
from mmops.app import App
from mmops.reporting import render_table
from trading.positions import decode_position
from workers.discovery import RecentSessions, discover
from workers.session_view import figures_of
from workers.sweep_pass import SweepReport
from workers.sweeper import Sweeper

ZERO = Decimal(0)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sweep = sub.add_parser(
        "sweep",
        help="the sweeper: one pass with --once (prints a table per session), the loop with --loop",
    )
    mode = sweep.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="run one pass, print its report, exit")
    mode.add_argument(
        "--loop", action="store_true", help="run the sweeper loop until SIGTERM (= mmops sweeper)"
    )
    sweep.add_argument("--json", action="store_true", help="with --once: the report as JSON")
    sweep.set_defaults(func=_sweep)
    verify = sub.add_parser(
        "verify-coverage",
        help="per session and pair: filled, covered, dust, uncovered; exit 1 if anything is "
        "uncovered longer than one interval",
    )
    verify.add_argument("--json", action="store_true", help="print JSON instead of a table")
    verify.set_defaults(func=_verify)


def _sweep(args: argparse.Namespace) -> int:
    if not (args.once or args.loop):
        print(
            "mmops sweep: give --once (one pass, printed) or --loop (the sweeper loop, "
            "like `mmops sweeper`)",
            file=sys.stderr,
        )
        return 2
    if args.loop:
        if args.json:
            print("mmops sweep: --json goes with --once, not --loop", file=sys.stderr)
            return 2
        from mmops.commands.run import serve

        runner.run(lambda s: serve(s, ("sweeper",)))
        return 0
    return runner.run(lambda s: sweep_once(s, as_json=args.json))


def _verify(args: argparse.Namespace) -> int:
    return runner.run(lambda s: verify(s, as_json=args.json))


# --- sweep --once ----------------------------------------------------------------------
async def sweep_once(settings: Settings, *, as_json: bool = False) -> int:
    app = await App.open(settings)
    app.install_signal_handlers()
    sweeper = await Sweeper.create(app)
    try:
        report = await sweeper.run_once()
    finally:
        await sweeper.close()
        await app.close()
    print(
        orjson.dumps(report_dict(report), default=str).decode() if as_json else render_sweep(report)
    )
    return 0 if report.ok else 1


def report_dict(report: SweepReport) -> dict[str, Any]:
    out: dict[str, Any] = {
        "started_at": report.started_at,
        "by": report.by,
        "duration_ms": report.duration_ms,
        "discovered": report.discovered,
        "with_work": report.with_work,
        "swept": report.swept,
        "stopped": report.stopped,
        "open_orders": report.open_orders,
        "book": report.book,
        "unknown_orders": report.unknown_orders,
        "migrations": report.migrations,
        "notes": report.notes,
        "errors": report.errors,
        "stream": vars(report.stream),
        "sessions": [{k: v for k, v in vars(s).items() if k != "actions"} for s in report.sessions],
        "risk": None,
    }
    if report.risk is not None:
        out["risk"] = {**vars(report.risk), "total": report.risk.total}
    return out


def render_sweep(report: SweepReport) -> str:
    rows = [
        [
            s.session_id,
            s.status,
            s.pairs,
            s.positions,
            s.uncovered_before,
            s.uncovered_after,
            s.covered,
            s.repriced,
            s.trimmed,
            s.dust,
            s.error_count,
            s.duration_ms,
        ]
        for s in report.sessions
    ]
    rows.append(
        [
            "total",
            "OK" if report.ok else "ERRORS",
            report.total("pairs"),
            report.total("positions"),
            report.total("uncovered_before"),
            report.total("uncovered_after"),
            report.total("covered"),
            report.total("repriced"),
            report.total("trimmed"),
            report.total("dust"),
            report.total("error_count") + len(report.errors),
            report.duration_ms,
        ]
    )
    lines = [
        render_table(
            [
                "session",
                "status",
                "pairs",
                "positions",
                "uncov before",
                "uncov after",
                "covered now",
                "repriced",
                "trimmed",
                "dust",
                "errors",
                "ms",
            ],
            rows,
            rule=True,
        )
    ]
    lines.append(
        f"sessions: {report.discovered} looked at, {report.with_work} with work, "
        f"{report.swept} swept"
        + (
            f", {report.deferred} deferred to the next passes (SETTLEMENT_MAX_SESSIONS)"
            if report.deferred
            else ""
        )
        + (f"; stopped early: {report.stopped}" if report.stopped else "")
    )
    stream = report.stream
    taken = ", ".join(f"{g} {n}" for g, n in stream.taken_over.items()) or "none"
    lines.append(
        f"stream: live consumers {stream.live or '{}'}; entries taken over: {taken}; "
        f"dead letters {stream.dead_len} (+{stream.dead_growth})"
        + (
            f"; removed consumers {', '.join(stream.removed_consumers)}"
            if stream.removed_consumers
            else ""
        )
    )
    if report.open_orders is not None:
        book = f"open orders {report.open_orders}"
    elif report.book:
        book = f"{report.book} since the last pass"
    else:
        book = "open orders unavailable"
    lines.append(
        f"exchange: {book}; reconciled {report.total('reconciled')}; filled without a fill event "
        f"{report.total('filled_unreported')}; unknown orders {len(report.unknown_orders)}"
    )
    if report.risk is not None and report.risk.limit is None:
        lines.append(
            "risk: PORTFOLIO_DAILY_LOSS_LIMIT not set"
            + (" (previous day's halt cleared)" if report.risk.cleared else "")
        )
    elif report.risk is not None:
        r = report.risk
        state = "HALT" if r.halted else "ok"
        lines.append(
            f"risk {r.day}: realized {r.realized:.2f} unrealized {r.unrealized:.2f} total "
            f"{r.total:.2f} limit {r.limit}: {state}"
            + (" (set now)" if r.set_now else "")
            + (" (previous day's halt cleared)" if r.cleared else "")
            + (f"; no quote for {', '.join(r.unpriced)}" if r.unpriced else "")
            + (f"; no last price, valued at the bid: {', '.join(r.at_bid)}" if r.at_bid else "")
            + (
                f"; emergency exits {r.exits}, TPs cancelled {r.cancelled}"
                if r.exits or r.cancelled
                else ""
            )
        )
    lines += [f"migration {m}" for m in report.migrations]
    lines += [f"note: {n}" for n in report.notes]
    for s in report.sessions:
        lines += [f"error {s.session_id}: {e}" for e in s.errors]
    lines += [f"error: {e}" for e in report.errors]
    return "\n".join(lines)


# --- verify-coverage -------------------------------------------------------------------
@dataclass
class PairCoverage:
    session_id: str
    symbol: str
    positions: int = 0
    filled: Decimal = ZERO
    covered: Decimal = ZERO  # in TPs or closed by other sells
    dust: Decimal = ZERO
    uncovered: Decimal = ZERO
    uncovered_positions: int = 0
    oldest_uncovered_ms: int | None = (
        None  # age of the oldest uncovered position (since its last buy)
    )


async def coverage(app: App, sids: Sequence[str]) -> list[PairCoverage]:
    """Coverage per session and pair, from the positions in Redis."""
    now = app.clock.now_ms()
    out: list[PairCoverage] = []
    async with app.redis.pipeline(transaction=False) as pipe:
        for sid in sids:
            pipe.hgetall(app.keys.positions(sid))
        stored = await pipe.execute()
    for sid, positions in zip(sids, stored, strict=True):
        pairs: dict[str, PairCoverage] = {}
        for raw in positions.values():
            f = figures_of(decode_position(raw))
            row = pairs.setdefault(f.symbol, PairCoverage(sid, f.symbol))
            row.positions += 1
            row.filled += f.filled
            row.covered += f.filled - f.uncovered
            if f.dust:
                row.dust += f.uncovered
            elif f.uncovered > 0:
                row.uncovered += f.uncovered
                row.uncovered_positions += 1
                age = now - f.last_buy_ms
                row.oldest_uncovered_ms = max(age, row.oldest_uncovered_ms or 0)
        out += [pairs[symbol] for symbol in sorted(pairs)]
    return out


async def verify(settings: Settings, *, as_json: bool = False) -> int:
    app = await App.open(settings)
    recent = RecentSessions(settings.database_url)
    try:
        found = await discover(app, recent)
        rows = await coverage(app, found.sessions)
    finally:
        await recent.close()
        await app.close()
    limit_ms = int(settings.interval_seconds * 1000)
    late = [
        r for r in rows if r.oldest_uncovered_ms is not None and r.oldest_uncovered_ms > limit_ms
    ]
    if as_json:
        print(
            orjson.dumps(
                {
                    "ok": not late,
                    "interval_ms": limit_ms,
                    "notes": found.notes,
                    "pairs": [
                        {k: _num(v) if isinstance(v, Decimal) else v for k, v in vars(r).items()}
                        for r in rows
                    ],
                },
                default=str,
            ).decode()
        )
    else:
        print(render_coverage(rows, found.notes, limit_ms, len(late)))
    return 1 if late else 0


def render_coverage(rows: list[PairCoverage], notes: list[str], limit_ms: int, late: int) -> str:
    body = [
        [
            r.session_id,
            r.symbol,
            r.positions,
            _num(r.filled),
            _num(r.covered),
            _num(r.dust),
            _num(r.uncovered),
            _age(r.oldest_uncovered_ms),
        ]
        for r in rows
    ]
    lines = [
        render_table(
            [
                "session",
                "pair",
                "positions",
                "filled",
                "covered",
                "dust",
                "uncovered",
                "oldest uncovered",
            ],
            body,
            rule=True,
        )
    ]
    lines += [f"note: {n}" for n in notes]
    lines.append(
        f"{late} pair(s) uncovered longer than {_age(limit_ms)}"
        if late
        else f"ok: nothing uncovered longer than {_age(limit_ms)}"
    )
    return "\n".join(lines)


def _num(value: Decimal) -> str:
    return f"{value.normalize():f}"


def _age(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
