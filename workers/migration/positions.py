"""The positions pass: our TP orders as COPY lines, and each position's round trips on the way.

Positions are walked as their stored decimal text (storage.session_reader.PositionRow)
and turned into Decimals only where a figure needs them; the rules are the position
model's (trading.pnl for cost and P&L, trading.positions for what is uncovered or
open). The pass also collects every fill id the positions applied, so the fills
pass can fetch them in id order, and the P&L each sell realized.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal, InvalidOperation, localcontext

import redis.asyncio as aioredis

from base import logs
from storage import session_reader as reader
from storage.keys import Keys
from storage.session_reader import CloseRow, PositionRow, decode_position_row, gc_paused
from storage.session_writer import ORDER_COLUMNS, copy_line, join_unescaped
from trading.pnl import buy_cost, unit_cost
from trading.positions import COVERING, StepStatus, open_quantity, uncovered_quantity
from workers.migration.figures import EXACT, ZERO, PairFigures
from workers.migration.tally import SessionTally

log = logs.get("mmops.migrator")


async def tp_order_lines(
    redis: aioredis.Redis, keys: Keys, tally: SessionTally
) -> AsyncIterator[bytes]:
    """Our TP orders, from the positions' steps (and any TP record they miss)."""
    async for raws in reader.scan_values(redis, keys.positions(tally.sid)):
        lines: list[str] = []
        with gc_paused(), localcontext(EXACT):
            for raw in raws:
                _position(tally, decode_position_row(raw), lines)
        if lines:
            yield join_unescaped(lines, len(ORDER_COLUMNS))
    lines = []
    for record in await reader.tp_records(redis, keys, tally.sid, skip=tally.tp_ids):
        line = _tp_record(tally, record)
        if line:
            lines.append(line)
    if lines:
        yield join_unescaped(lines, len(ORDER_COLUMNS))


def _position(t: SessionTally, p: PositionRow, lines: list[str]) -> None:
    """Figures of one position, in one pass."""
    figure = t.figures.get(p.symbol) or t.figure(p.symbol)
    ids, dec = t.fill_ids, t.dec
    filled = cost = fees = closed = covered = tp_filled = ZERO
    for buy in p.buys:
        qty, fee = dec[buy.qty], dec[buy.fee]
        cost += buy_cost(dec[buy.price], qty, fee)
        fees += fee
        filled += qty
        ids.append(buy.fill_id)
    unit = unit_cost(cost, filled) if filled > 0 else None
    fee_per_unit = fees / filled if filled > 0 else ZERO
    for close in p.closes:
        closed += dec[close.qty]
        ids.append(close.fill_id)
        if unit is not None:
            _round_trip(t, figure, close, unit, fee_per_unit)
    for step in p.steps:
        step_filled = ZERO
        for close in step.fills:
            step_filled += dec[close.qty]
            ids.append(close.fill_id)
            if unit is not None:
                _round_trip(t, figure, close, unit, fee_per_unit)
        tp_filled += step_filled
        if step.status in COVERING:
            covered += dec[step.qty] - dec[step.cancelled]
        if step.order_id and step.order_id not in t.tp_ids:
            t.tp_ids.add(step.order_id)
            figure.orders += 1
            t.new_orders += 1
            status = step.status
            if status == StepStatus.LIVE and step_filled > 0:
                status = "partially_filled"
            lines.append(
                f"{step.order_id}\t{t.sid}\t{p.symbol}\t{t.index[p.symbol]}\tsell\tlimit\t"
                f"{step.qty}\t{step.price}\t{status}\tt\t{p.id}\t{step.client_id}\t{step.tier}\t"
                f"{step_filled}\t{t.ts(step.acked_at or step.claimed_at)}\n"
            )
    uncovered = uncovered_quantity(filled, covered, closed)
    if uncovered > 0 and dec[p.dust] != uncovered:  # dust: recorded, not retried
        t.uncovered += 1
    if open_quantity(filled, closed, tp_filled) > 0:
        t.open_positions += 1


def _round_trip(
    t: SessionTally, figure: PairFigures, close: CloseRow, unit: Decimal, fee_per_unit: Decimal
) -> None:
    dec = t.dec
    pnl = figure.round_trip(dec[close.price], dec[close.qty], dec[close.fee], unit, fee_per_unit)
    t.sell_pnl[close.fill_id] = t.sell_pnl.get(close.fill_id, ZERO) + pnl


def _tp_record(t: SessionTally, record: reader.TpRecord) -> str | None:
    """A TP order known only from its `tp_order` hash (no position mentions it)."""
    f = record.fields
    symbol = f.get("symbol", "")
    try:
        quantity, price = Decimal(f["quantity"]), Decimal(f["price"])
        filled = Decimal(f.get("filled") or "0")
    except (KeyError, InvalidOperation):
        log.warning("TP record %s of session %s is malformed; skipped", record.order_id, t.sid)
        return None
    if not symbol:
        return None
    t.tp_ids.add(record.order_id)
    t.figure(symbol).orders += 1
    t.new_orders += 1
    created = reader.iso_to_ms(f.get("created_at", "")) or t.header.ended_at or t.now
    return copy_line(
        (
            record.order_id,
            t.sid,
            symbol,
            str(t.index[symbol]),
            "sell",
            "limit",
            str(quantity),
            str(price),
            f.get("status") or "unknown",
            "t",
            f.get("position", ""),
            f.get("client_id", ""),
            f.get("tier", ""),
            str(filled),
            t.ts(created),
        )
    )
