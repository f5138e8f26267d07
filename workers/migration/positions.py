"""The positions pass: our TP orders as COPY lines, each position's figures and round trips
on the way (`measure`, also used by the sync after a session's end).

Positions are walked as their stored decimal text (storage.session_reader.PositionRow)
and turned into Decimals only where a figure needs them; the rules are the position
model's (trading.pnl for cost and P&L, trading.positions for what is uncovered or
open). The pass also collects every fill id the positions applied, so the fills
pass can fetch them in id order, and the P&L each sell realized.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal, InvalidOperation, localcontext

from base import logs
from storage import session_reader as reader
from storage.keys import Keys
from storage.orders import status_rank
from storage.redis import AnyRedis
from storage.session_reader import CloseRow, PositionRow, decode_position_row, gc_paused
from storage.session_writer import ORDER_COLUMNS, copy_line, join_unescaped
from trading.pnl import buy_cost, unit_cost
from trading.positions import (
    COVERING,
    MAY_SELL,
    StepStatus,
    open_quantity,
    uncovered_quantity,
)
from workers.migration.figures import EXACT, ZERO, DecimalCache, PositionFigures
from workers.migration.tally import SessionTally

log = logs.get("mmops.migrator")


async def tp_order_lines(redis: AnyRedis, keys: Keys, tally: SessionTally) -> AsyncIterator[bytes]:
    """Our TP orders, from the positions' steps (and any TP record they miss)."""
    async for raws in reader.scan_values(redis, keys.positions(tally.sid)):
        lines: list[str] = []
        with gc_paused(), localcontext(EXACT):
            for raw in raws:
                position(tally, decode_position_row(raw), lines)
        if lines:
            yield join_unescaped(lines, len(ORDER_COLUMNS))
    lines = []
    for record in await reader.tp_records(redis, keys, tally.sid, skip=tally.tp_ids):
        line = _tp_record(tally, record)
        if line:
            lines.append(line)
    if lines:
        yield join_unescaped(lines, len(ORDER_COLUMNS))


def position(t: SessionTally, p: PositionRow, lines: list[str]) -> None:
    """One position: its figures into its pair's and its `positions` row, its TP orders as
    COPY lines into `lines` (each TP order once per tally)."""
    figure = t.figures.get(p.symbol) or t.figure(p.symbol)
    figures, step_filled = measure(p, t.dec, t.sell_pnl, t.fill_ids)
    figure.add(figures)
    t.position_lines.append(
        f"{t.sid}\t{p.id}\t{p.symbol}\t{t.ts(p.opened_at) if p.opened_at else ''}\t"
        f"{figures.quantity}\t{figures.open_quantity}\t{figures.on_book}\t"
        f"{'t' if figures.uncovered else 'f'}\t{figures.pnl}\t{figures.round_trips}\t"
        f"{figures.wins}\t{figures.spread_sum}\t{figures.trade_fees}\n"
    )
    for step, filled in zip(p.steps, step_filled, strict=True):
        if not step.order_id or step.order_id in t.tp_ids:
            continue
        t.tp_ids.add(step.order_id)
        figure.orders += 1
        t.new_orders += 1
        status = step.status
        if status == StepStatus.LIVE and filled > 0:
            status = "partially_filled"
        lines.append(
            f"{step.order_id}\t{t.sid}\t{p.symbol}\t{t.index[p.symbol]}\tsell\tlimit\t"
            f"{step.qty}\t{step.price}\t{status}\tt\t{p.id}\t{step.client_id}\t{step.tier}\t"
            f"{filled}\t{t.ts(step.acked_at or step.claimed_at)}\t\t{status_rank(status)}\n"
        )


def measure(
    p: PositionRow, dec: DecimalCache, sell_pnl: dict[str, Decimal], fill_ids: list[str]
) -> tuple[PositionFigures, list[Decimal]]:
    """A position's figures in one walk, and each step's filled quantity. Adds the P&L each
    sell realized on it to `sell_pnl` and every fill id it applied to `fill_ids`. Exact: the
    caller computes in localcontext(EXACT)."""
    f = PositionFigures()
    filled = cost = fees = closed = covered = tp_filled = on_book = ZERO
    for buy in p.buys:
        qty, fee = dec[buy.qty], dec[buy.fee]
        cost += buy_cost(dec[buy.price], qty, fee)
        fees += fee
        filled += qty
        fill_ids.append(buy.fill_id)
    unit = unit_cost(cost, filled) if filled > 0 else None
    fee_per_unit = fees / filled if filled > 0 else ZERO
    for close in p.closes:
        closed += dec[close.qty]
        fill_ids.append(close.fill_id)
        if unit is not None:
            _round_trip(f, close, unit, fee_per_unit, dec, sell_pnl)
    step_filled: list[Decimal] = []
    for step in p.steps:
        done = ZERO
        for close in step.fills:
            done += dec[close.qty]
            fill_ids.append(close.fill_id)
            if unit is not None:
                _round_trip(f, close, unit, fee_per_unit, dec, sell_pnl)
        step_filled.append(done)
        tp_filled += done
        if step.status in COVERING:
            covered += dec[step.qty] - dec[step.cancelled]
        if step.status in MAY_SELL:
            on_book += dec[step.qty] - dec[step.cancelled] - done
    uncovered = uncovered_quantity(filled, covered, closed)
    f.uncovered = uncovered > 0 and dec[p.dust] != uncovered  # dust: recorded, not retried
    f.quantity = filled
    f.open_quantity = open_quantity(filled, closed, tp_filled)
    f.on_book = max(ZERO, on_book)
    return f, step_filled


def _round_trip(
    f: PositionFigures,
    close: CloseRow,
    unit: Decimal,
    fee_per_unit: Decimal,
    dec: DecimalCache,
    sell_pnl: dict[str, Decimal],
) -> None:
    pnl = f.round_trip(dec[close.price], dec[close.qty], dec[close.fee], unit, fee_per_unit)
    sell_pnl[close.fill_id] = sell_pnl.get(close.fill_id, ZERO) + pnl


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
            "",
            str(status_rank(f.get("status") or "unknown")),
        )
    )
