"""What the passes over one session share and add up, and the summary rows made from it.

The positions pass learns the TP order ids, every applied fill id and each sell's P&L;
the fills pass counts per pair and gathers the trader's orders from their fills; the
orders pass writes those. The `sessions` and `session_pairs` rows come from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from storage.session_reader import SessionHeader, ms_to_datetime
from storage.session_writer import PairRow, PairTotals, SessionRow, TimestampText
from workers.migration.figures import ZERO, DecimalCache, OrderFills, PairFigures, money


@dataclass
class SessionTally:
    header: SessionHeader
    now: int  # epoch ms of this migration (migrated_at; a TP record's fallback time)
    pairs: list[str] = field(default_factory=list)  # listed first, then as met
    index: dict[str, int] = field(default_factory=dict)  # symbol -> pair_index
    figures: dict[str, PairFigures] = field(default_factory=dict)
    sell_pnl: dict[str, Decimal] = field(default_factory=dict)  # fill id -> P&L it realized
    fill_ids: list[str] = field(default_factory=list)  # ids the positions mention
    tp_ids: set[str] = field(default_factory=set)
    event_ids: set[str] = field(default_factory=set)  # orders written from `order` events
    derived: dict[str, OrderFills] = field(default_factory=dict)  # fills of non-TP orders
    first_fill_ms: int | None = None
    position_lines: list[str] = field(default_factory=list)  # COPY lines of `positions`
    fills_before_end: int = 0  # fills read whose event precedes the session's end
    sync_cursor: str = "0-0"  # the last changes:{sid} entry the state read includes
    new_fills: int = 0
    new_orders: int = 0
    ts: TimestampText = field(default_factory=TimestampText)
    dec: DecimalCache = field(default_factory=DecimalCache)

    def __post_init__(self) -> None:
        self.sid = self.header.session_id
        for symbol in self.header.pairs:
            self.figure(symbol)

    def figure(self, symbol: str) -> PairFigures:
        """The pair's figures; a pair met for the first time joins the session's pairs."""
        found = self.figures.get(symbol)
        if found is None:
            found = self.figures[symbol] = PairFigures()
            if symbol not in self.index:
                self.index[symbol] = len(self.pairs)
                self.pairs.append(symbol)
        return found

    @property
    def totals_fills(self) -> int:
        return sum(f.fills for f in self.figures.values())

    @property
    def totals_orders(self) -> int:
        return sum(f.orders for f in self.figures.values())

    def use_totals(self, totals: PairTotals) -> None:
        """Staging path: counts and sums as the tables now hold them."""
        for symbol in set(totals.fills) | set(totals.orders):
            self.figure(symbol)
        for symbol, figure in self.figures.items():
            figure.fills = totals.fills.get(symbol, 0)
            figure.fees = totals.fees.get(symbol, ZERO)
            figure.volume = totals.volume.get(symbol, ZERO)
            figure.orders = totals.orders.get(symbol, 0)
        if totals.first_fill is not None:
            self.first_fill_ms = int(totals.first_fill.timestamp() * 1000)

    def pair_rows(self) -> list[PairRow]:
        rows = []
        for symbol in self.pairs:
            f = self.figures[symbol]
            rows.append(
                PairRow(
                    symbol=symbol,
                    total_orders=f.orders,
                    total_fills=f.fills,
                    total_pnl=money(f.pnl),
                    total_fees=money(f.fees),
                    avg_spread=f.avg_spread(),
                    round_trips=f.round_trips,
                    wins=f.wins,
                    trade_fees=money(f.trade_fees),
                    total_volume=money(f.volume),
                    open_positions=f.open_positions,
                    uncovered_positions=f.uncovered_positions,
                )
            )
        return rows

    @property
    def closed(self) -> bool:
        """No position open and no TP on the book (contract §2 `closed_at`)."""
        return not any(f.open_positions or f.live_positions for f in self.figures.values())

    def session_row(self) -> SessionRow:
        pairs = self.pair_rows()
        header = self.header
        started = header.started_at if header.started_at is not None else self.first_fill_ms
        fills = sum(p.total_fills for p in pairs)
        return SessionRow(
            id=self.sid,
            pairs=tuple(self.pairs),
            total_orders=sum(p.total_orders for p in pairs),
            total_fills=fills,
            total_pnl=sum((p.total_pnl for p in pairs), ZERO),
            total_fees=sum((p.total_fees for p in pairs), ZERO),
            total_volume=sum((p.total_volume for p in pairs), ZERO),
            uncovered_positions=sum(p.uncovered_positions for p in pairs),
            open_positions=sum(p.open_positions for p in pairs),
            duplicate_fills=max(0, header.fills - fills),
            end_reason=header.end_reason,
            started_at=ms_to_datetime(started) if started is not None else None,
            ended_at=ms_to_datetime(header.ended_at) if header.ended_at is not None else None,
            migrated_at=ms_to_datetime(self.now),
            fills_expected=header.fills_expected,
            sync_cursor=self.sync_cursor,
            closed=self.closed,
        )
