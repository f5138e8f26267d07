"""Kraken's shapes for the stand-in (tests/fake_kraken.py): pairs, assets, order records,
error strings, and the faults a test can inject.

The pair and asset records follow /0/public/AssetPairs and /0/public/Assets; an order
follows what OpenOrders/ClosedOrders/QueryOrders show. Written from Kraken's documented
shapes (docs.kraken.com), not copied from anyone's recording.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

# Kraken's documented error strings the stand-in answers with
POST_ONLY_REFUSED = "EOrder:Post only order"
RATE_LIMITED = "EOrder:Rate limit exceeded"
ORDERS_LIMITED = "EOrder:Orders limit exceeded"
INSUFFICIENT_FUNDS = "EOrder:Insufficient funds"
UNKNOWN_ORDER = "EOrder:Unknown order"
# The text Kraken answers when an open order already carries the cl_ord_id is not
# documented; this is a stand-in's guess. The adapter does not match it: it looks the id up.
DUPLICATE_CL_ORD_ID = "EOrder:Duplicate order"

# cl_ord_id forms Kraken accepts: a long UUID, a short (dashless) UUID, or free ASCII
# text of at most 18 characters
_CL_ORD_ID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32}|[\x21-\x7e]{1,18}"
)


def valid_cl_ord_id(text: str) -> bool:
    return _CL_ORD_ID.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Limits:
    """A verification tier's trading limits, as Kraken publishes them."""

    threshold: float = 60.0  # counter value above which orders are refused
    decay_per_s: float = 1.0
    max_open: int = 60  # open orders per pair


STARTER = Limits(threshold=60, decay_per_s=1.0, max_open=60)
INTERMEDIATE = Limits(threshold=125, decay_per_s=2.34, max_open=80)
PRO = Limits(threshold=180, decay_per_s=3.75, max_open=225)


def cancel_penalty(age_s: float) -> int:
    """What cancelling an order of this age adds to the pair's counter (Kraken's table)."""
    for younger_than, penalty in ((5, 8), (10, 6), (15, 5), (45, 4), (90, 2), (300, 1)):
        if age_s < younger_than:
            return penalty
    return 0


@dataclass(slots=True)
class Counter:
    """One pair's trading counter: decays linearly, refuses above the threshold."""

    limits: Limits
    value: float = 0.0
    at: float = 0.0  # time.monotonic() of `value`
    peak: float = 0.0  # the highest value it ever reached
    spent: float = 0.0  # everything ever added
    refused: int = 0

    def now(self, t: float) -> float:
        if t > self.at:
            self.value = max(0.0, self.value - (t - self.at) * self.limits.decay_per_s)
            self.at = t
        return self.value

    def fits(self, cost: float, t: float) -> bool:
        return self.now(t) + cost <= self.limits.threshold + 1e-9

    def add(self, cost: float, t: float) -> None:
        self.value = self.now(t) + cost
        self.spent += cost
        self.peak = max(self.peak, self.value)


_TAKER = [
    [0, 0.4],
    [10000, 0.35],
    [50000, 0.24],
    [100000, 0.22],
    [250000, 0.2],
    [500000, 0.18],
    [1000000, 0.16],
    [2500000, 0.14],
    [5000000, 0.12],
    [10000000, 0.1],
]
_MAKER = [
    [0, 0.25],
    [10000, 0.2],
    [50000, 0.14],
    [100000, 0.12],
    [250000, 0.1],
    [500000, 0.08],
    [1000000, 0.06],
    [2500000, 0.04],
    [5000000, 0.02],
    [10000000, 0.0],
]


def pair_record(
    altname: str,
    wsname: str,
    base: str,
    quote: str,
    *,
    pair_decimals: int,
    lot_decimals: int,
    cost_decimals: int,
    ordermin: str,
    tick_size: str,
    leverage: list[int],
) -> dict[str, Any]:
    """One entry of /0/public/AssetPairs, shaped like Kraken's."""
    return {
        "altname": altname,
        "wsname": wsname,
        "aclass_base": "currency",
        "base": base,
        "aclass_quote": "currency",
        "quote": quote,
        "lot": "unit",
        "cost_decimals": cost_decimals,
        "pair_decimals": pair_decimals,
        "lot_decimals": lot_decimals,
        "lot_multiplier": 1,
        "leverage_buy": leverage,
        "leverage_sell": leverage,
        "fees": _TAKER,
        "fees_maker": _MAKER,
        "fee_volume_currency": "ZUSD",
        "margin_call": 80,
        "margin_stop": 40,
        "ordermin": ordermin,
        "costmin": "0.5",
        "tick_size": tick_size,
        "status": "online",
        "long_position_limit": 250,
        "short_position_limit": 200,
    }


PAIRS: dict[str, dict[str, Any]] = {
    "XXBTZUSD": pair_record(
        "XBTUSD", "XBT/USD", "XXBT", "ZUSD",
        pair_decimals=1, lot_decimals=8, cost_decimals=5,
        ordermin="0.00005", tick_size="0.1", leverage=[2, 3, 4, 5],
    ),
    "XETHZUSD": pair_record(
        "ETHUSD", "ETH/USD", "XETH", "ZUSD",
        pair_decimals=2, lot_decimals=8, cost_decimals=5,
        ordermin="0.002", tick_size="0.01", leverage=[2, 3, 4, 5],
    ),
    "SOLUSD": pair_record(
        "SOLUSD", "SOL/USD", "SOL", "ZUSD",
        pair_decimals=2, lot_decimals=8, cost_decimals=5,
        ordermin="0.02", tick_size="0.01", leverage=[2, 3],
    ),
    "XXRPZUSD": pair_record(
        "XRPUSD", "XRP/USD", "XXRP", "ZUSD",
        pair_decimals=5, lot_decimals=8, cost_decimals=6,
        ordermin="2", tick_size="0.00001", leverage=[2, 3, 4, 5],
    ),
}  # fmt: skip

ASSETS: dict[str, dict[str, Any]] = {
    "XXBT": {"aclass": "currency", "altname": "XBT", "decimals": 10, "display_decimals": 5,
             "collateral_value": 1.0, "status": "enabled"},
    "ZUSD": {"aclass": "currency", "altname": "USD", "decimals": 4, "display_decimals": 2,
             "collateral_value": 1.0, "status": "enabled"},
    "XETH": {"aclass": "currency", "altname": "ETH", "decimals": 10, "display_decimals": 5,
             "collateral_value": 1.0, "status": "enabled"},
    "SOL": {"aclass": "currency", "altname": "SOL", "decimals": 10, "display_decimals": 5,
            "collateral_value": 0.9, "status": "enabled"},
    "XXRP": {"aclass": "currency", "altname": "XRP", "decimals": 8, "display_decimals": 5,
             "collateral_value": 0.9, "status": "enabled"},
}  # fmt: skip

DEFAULT_BOOKS: dict[str, tuple[str, str]] = {
    "XXBTZUSD": ("64584.8", "64585.0"),
    "XETHZUSD": ("3150.21", "3150.22"),
    "SOLUSD": ("145.67", "145.68"),
    "XXRPZUSD": ("0.61790", "0.61791"),
}

DEFAULT_BALANCES: dict[str, str] = {
    "XXBT": "10",
    "XETH": "100",
    "SOL": "1000",
    "XXRP": "100000",
    "ZUSD": "1000000",
}


def fmt(value: Decimal, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def decimals_of(text: str) -> int:
    """Digits after the point as written ('0.010' -> 3); exponent notation is refused."""
    if not text or any(c in text for c in "eE+ ") or text.count(".") > 1:
        raise InvalidOperation(text)
    return len(text.split(".", 1)[1]) if "." in text else 0


class KrakenError(Exception):
    """Answered as {"error": [str(self)]} with HTTP 200, as Kraken does."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected misbehaviour for the next request to an endpoint."""

    kind: str  # "http" | "error" | "stale" | "hang" | "accept_then_hang"
    status: int = 200
    body: str = ""
    error: str = ""
    seconds: float = 0.0
    result: Any = None

    @classmethod
    def http(
        cls, status: int = 503, body: str = "<html><body>503 Service Unavailable</body></html>"
    ) -> Fault:
        """An HTTP error page instead of an answer; the request is not processed."""
        return cls("http", status=status, body=body)

    @classmethod
    def kraken_error(cls, message: str) -> Fault:
        """A Kraken error envelope, e.g. 'EGeneral:Too many requests'; not processed."""
        return cls("error", error=message)

    @classmethod
    def stale(cls, result: Any) -> Fault:
        """A successful envelope with this canned result (a lagging read); not processed."""
        return cls("stale", result=result)

    @classmethod
    def hang(cls, seconds: float) -> Fault:
        """Answer nothing for `seconds` (longer than the client timeout); not processed."""
        return cls("hang", seconds=seconds)

    @classmethod
    def accept_then_hang(cls, seconds: float) -> Fault:
        """Process the request (an order IS placed), then delay the answer by `seconds`."""
        return cls("accept_then_hang", seconds=seconds)


@dataclass(slots=True)
class Recorded:
    """One request as the server saw it: `fields` are the decoded form/query fields (or the
    top-level JSON members, as text), `body` the decoded JSON body, `key` the API key."""

    method: str
    path: str
    fields: dict[str, str]
    fault: str | None = None
    body: Any = None
    key: str = ""
    errors: list[str] = field(default_factory=list)  # what the server answered with
    answer: Any = None  # the JSON envelope sent back

    @property
    def endpoint(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(slots=True)
class FakeOrder:
    txid: str
    pair: str  # Kraken pair id, e.g. XXBTZUSD
    side: str
    ordertype: str
    price: Decimal
    volume: Decimal
    cl_ord_id: str | None
    userref: int | None
    oflags: str
    opentm: float
    vol_exec: Decimal = Decimal(0)
    avg_price: Decimal = Decimal(0)
    status: str = "open"
    reason: str | None = None
    closetm: float | None = None
    owner: str = ""  # the API key that placed it
    trades: list[str] = field(default_factory=list)  # ids of the trades that filled it

    def to_kraken(self, *, query: bool = False, trades: bool = False) -> dict[str, Any]:
        """The order as OpenOrders/ClosedOrders/QueryOrders show it. QueryOrders (`query`)
        shows `reason` on open orders too; `trades` adds the trade ids of an order that
        traded, as QueryOrders with trades=true does."""
        info = PAIRS[self.pair]
        pd, ld = int(info["pair_decimals"]), int(info["lot_decimals"])
        cost = self.vol_exec * self.avg_price
        fee = cost * Decimal(str(info["fees_maker"][0][1])) / 100
        out: dict[str, Any] = {
            "refid": None,
            # Kraken shows userref 0 on orders placed with neither userref nor cl_ord_id
            "userref": self.userref if self.userref is not None or self.cl_ord_id else 0,
            "status": self.status,
            "opentm": self.opentm,
            "starttm": 0,
            "expiretm": 0,
            "descr": {
                "pair": info["altname"],
                "type": self.side,
                "ordertype": self.ordertype,
                "price": fmt(self.price, pd),
                "price2": "0",
                "leverage": "none",
                "order": f"{self.side} {fmt(self.volume, ld)} {info['altname']} @ "
                f"{self.ordertype} {fmt(self.price, pd)}",
                "close": "",
            },
            "vol": fmt(self.volume, ld),
            "vol_exec": fmt(self.vol_exec, ld),
            "cost": fmt(cost, int(info["cost_decimals"])),
            "fee": fmt(fee, int(info["cost_decimals"])),
            "price": fmt(self.avg_price, pd),
            "stopprice": "0.00000",
            "limitprice": "0.00000",
            "misc": "",
            "oflags": self.oflags,
        }
        if self.cl_ord_id is not None:
            out["cl_ord_id"] = self.cl_ord_id
        if trades and self.trades:
            out["trades"] = list(self.trades)
        if query or self.status != "open":
            out["reason"] = self.reason
        if self.status != "open":
            out["closetm"] = self.closetm
        return out


@dataclass(frozen=True, slots=True)
class Spec:
    """A validated order request."""

    pair: str
    side: str
    ordertype: str
    volume: Decimal
    price: Decimal
    cl_ord_id: str | None
    userref: int | None
    oflags: list[str]


def validate_order(pid: str, fields: Mapping[str, Any]) -> Spec:
    """Kraken's checks of the request itself (the whole batch fails on one)."""
    info = PAIRS[pid]
    for required in ("type", "ordertype", "volume"):
        if required not in fields:
            raise KrakenError(f"EGeneral:Invalid arguments:{required}")
    side, ordertype = str(fields["type"]), str(fields["ordertype"])
    if side not in ("buy", "sell"):
        raise KrakenError("EGeneral:Invalid arguments:type")
    if ordertype != "limit":
        raise KrakenError("EGeneral:Invalid arguments:ordertype")
    try:
        if decimals_of(str(fields["volume"])) > int(info["lot_decimals"]):
            raise KrakenError("EGeneral:Invalid arguments:volume")
        volume = Decimal(str(fields["volume"]))
    except InvalidOperation:
        raise KrakenError("EGeneral:Invalid arguments:volume") from None
    try:
        price_text = str(fields["price"])
        if decimals_of(price_text) > int(info["pair_decimals"]):
            raise KrakenError(
                f"EOrder:Invalid price:{info['altname']} price can only be specified up to "
                f"{info['pair_decimals']} decimals."
            )
        price = Decimal(price_text)
    except (KeyError, InvalidOperation):
        raise KrakenError("EGeneral:Invalid arguments:price") from None
    if volume <= 0 or price <= 0:
        raise KrakenError("EGeneral:Invalid arguments:volume")
    if volume < Decimal(info["ordermin"]):
        raise KrakenError("EOrder:Order minimum not met")
    if volume * price < Decimal(info["costmin"]):
        raise KrakenError("EOrder:Cost minimum not met")
    cl_ord_id = None if fields.get("cl_ord_id") is None else str(fields["cl_ord_id"])
    if cl_ord_id is not None and not valid_cl_ord_id(cl_ord_id):
        raise KrakenError("EGeneral:Invalid arguments:cl_ord_id")
    userref = int(fields["userref"]) if "userref" in fields else None
    if cl_ord_id is not None and userref is not None:
        raise KrakenError("EGeneral:Invalid arguments:cl_ord_id")  # mutually exclusive
    oflags = [f for f in str(fields.get("oflags", "")).split(",") if f]
    return Spec(pid, side, ordertype, volume, price, cl_ord_id, userref, oflags)


def ticker_entry(pid: str, bid: Decimal, ask: Decimal) -> dict[str, Any]:
    """One pair of /0/public/Ticker for a book with this best bid and ask."""
    mid = (bid + ask) / 2
    pd = int(PAIRS[pid]["pair_decimals"])
    return {
        "a": [fmt(ask, pd), "1", "1.000"],
        "b": [fmt(bid, pd), "2", "2.000"],
        "c": [fmt(mid, pd), "0.00100000"],
        "v": ["1000.00000000", "2000.00000000"],
        "p": [fmt(mid, pd), fmt(mid, pd)],
        "t": [1000, 2000],
        "l": [fmt(bid * Decimal("0.99"), pd), fmt(bid * Decimal("0.98"), pd)],
        "h": [fmt(ask * Decimal("1.01"), pd), fmt(ask * Decimal("1.02"), pd)],
        "o": fmt(mid, pd),
    }


def describe(spec: Spec) -> str:
    """An order's `descr.order` text, as Kraken writes it."""
    info = PAIRS[spec.pair]
    pd, ld = int(info["pair_decimals"]), int(info["lot_decimals"])
    return f"{spec.side} {fmt(spec.volume, ld)} {info['altname']} @ limit {fmt(spec.price, pd)}"
