"""What must be true after a run, from docs/contract.md alone.

Independent of the project on purpose: it imports nothing of mmops (no position model,
pricing, ledger, events codec or storage), only the standard library. Its input is what
the run sent — every XADDed entry as raw fields, in the order sent (a session's entries
are in one stream, in that order) — and which position each TP the run filled on the
exchange belonged to (read from `tp_order:{sid}:<order_id>`'s `position`, contract §2).

The contract's rules it applies (§1, §3):
- a fill is counted once per (session, fill_id), whatever the deliveries;
- a position is one buy order (position_id = its order_id); its unit cost is
  (Σ price × quantity + Σ buy fees) / Σ quantity;
- a sell on a TP's order closes that much of the TP's position; any other sell closes the
  pair's oldest open positions first, oldest by the stream order of their first buy fill;
- realized P&L = sell proceeds − the sold quantity's cost − the sell's fee;
- `order` events: the newest by `ts` wins (at equal `ts`, the one further along);
- a session is closed when it ended and none of its positions is open.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal, localcontext

EXACT = Context(prec=80)
ZERO = Decimal(0)
FINAL = {"closed", "filled", "canceled", "cancelled", "expired", "rejected"}

Entry = tuple[str, str, Sequence[tuple[bytes, bytes]], str]  # stream, id, fields, invalid kind


@dataclass
class Position:
    pid: str
    symbol: str
    filled: Decimal = ZERO
    cost: Decimal = ZERO
    closed: Decimal = ZERO

    @property
    def open(self) -> Decimal:
        return self.filled - self.closed

    def unit(self) -> Decimal:
        return self.cost / self.filled if self.filled else ZERO


@dataclass
class SessionFigures:
    sid: str
    ended: bool = False
    fills: set[str] = field(default_factory=set)
    sells: int = 0
    pnl: Decimal = ZERO
    pair_pnl: dict[str, Decimal] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)  # in order of first buy
    orders: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # id -> ts, rank, status

    @property
    def closed(self) -> bool:
        return self.ended and all(p.open == 0 for p in self.positions.values())


@dataclass
class Expected:
    sessions: dict[str, SessionFigures] = field(default_factory=dict)
    invalid: dict[tuple[str, str], str] = field(default_factory=dict)  # (stream, id) -> kind
    oversold: list[str] = field(default_factory=list)  # sells the run should not have made


def _rank(status: str) -> int:
    low = status.lower()
    return 2 if low in FINAL else 1 if "partial" in low else 0


def expected(entries: Iterable[Entry], tp_owner: Mapping[str, str]) -> Expected:
    out = Expected()
    with localcontext(EXACT):
        for stream, entry_id, raw, invalid in entries:
            if invalid:
                out.invalid[(stream, entry_id)] = invalid
                continue
            fields = {k.decode(): v.decode() for k, v in raw}
            sid = fields["session_id"]
            s = out.sessions.setdefault(sid, SessionFigures(sid))
            kind = fields["type"]
            if kind == "session_ended":
                s.ended = True
            elif kind == "order":
                new = (int(fields["ts"]), _rank(fields["status"]), fields["status"])
                old = s.orders.get(fields["order_id"])
                if old is None or new[:2] > old[:2]:
                    s.orders[fields["order_id"]] = new
            elif kind == "fill" and fields["fill_id"] not in s.fills:
                s.fills.add(fields["fill_id"])
                _fill(out, s, fields, tp_owner)
    return out


def _fill(out: Expected, s: SessionFigures, f: dict[str, str], tp_owner: Mapping[str, str]) -> None:
    price, qty, fee = Decimal(f["price"]), Decimal(f["quantity"]), Decimal(f["fee"])
    symbol = f["symbol"]
    if f["side"] == "buy":
        pos = s.positions.setdefault(f["order_id"], Position(f["order_id"], symbol))
        pos.filled += qty
        pos.cost += price * qty + fee
        return
    s.sells += 1
    owner = tp_owner.get(f["order_id"])
    if owner is not None:
        takes = [(s.positions[owner], qty)]
    else:
        takes, left = [], qty
        for pos in s.positions.values():
            if pos.symbol == symbol and pos.open > 0 and left > 0:
                part = min(pos.open, left)
                takes.append((pos, part))
                left -= part
        if left > 0:
            out.oversold.append(f"{s.sid}/{f['fill_id']}: {left} more than open")
    pnl = price * qty - fee
    for pos, part in takes:
        pnl -= part * pos.unit()
        pos.closed += part
    s.pnl += pnl
    s.pair_pnl[symbol] = s.pair_pnl.get(symbol, ZERO) + pnl
