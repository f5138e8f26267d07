"""A local stand-in for Kraken's spot REST API, for tests that drive the real ccxt client.

It speaks what ccxt's kraken client calls, with Kraken's paths (/0/public/..., /0/private/...),
its JSON envelope {"error": [...], "result": ...}, its pair/asset/order shapes and its
error strings. Private calls are form-encoded POSTs signed the way Kraken checks them:
API-Sign = base64(HMAC-SHA512(uri path + SHA256(nonce + post data), base64-decoded secret)),
with a strictly increasing nonce per key.

Behaviour that matters to an order placer is modelled: cl_ord_id unique among OPEN orders
only, a post-only sell at or below the best bid refused, sells limited by the free base
balance, CancelOrder of a closed order answered with "EOrder:Unknown order".

For tests: every request is recorded (path and decoded fields), and `inject` queues faults
per endpoint (HTTP 5xx, a Kraken error, a stale canned answer, a response slower than the
client's timeout, or "accept the order, then be too slow to answer").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import random
import string
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

# The text Kraken answers when an open order already carries the cl_ord_id. Not documented
# verbatim by Kraken; the adapter matches "duplicate" in an EOrder error, not this string.
DUPLICATE_CL_ORD_ID = "EOrder:Duplicate order"
POST_ONLY_REFUSED = "EOrder:Post only order"

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


def _pair(
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
    "XXBTZUSD": _pair(
        "XBTUSD", "XBT/USD", "XXBT", "ZUSD",
        pair_decimals=1, lot_decimals=8, cost_decimals=5,
        ordermin="0.00005", tick_size="0.1", leverage=[2, 3, 4, 5],
    ),
    "XETHZUSD": _pair(
        "ETHUSD", "ETH/USD", "XETH", "ZUSD",
        pair_decimals=2, lot_decimals=8, cost_decimals=5,
        ordermin="0.002", tick_size="0.01", leverage=[2, 3, 4, 5],
    ),
    "SOLUSD": _pair(
        "SOLUSD", "SOL/USD", "SOL", "ZUSD",
        pair_decimals=2, lot_decimals=8, cost_decimals=5,
        ordermin="0.02", tick_size="0.01", leverage=[2, 3],
    ),
    "XXRPZUSD": _pair(
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


def _fmt(value: Decimal, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def _decimals(text: str) -> int:
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
    """One request as the server saw it; `fields` are the decoded form/query fields."""

    method: str
    path: str
    fields: dict[str, str]
    fault: str | None = None

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

    def to_kraken(self) -> dict[str, Any]:
        """The order as OpenOrders/ClosedOrders/QueryOrders show it."""
        info = PAIRS[self.pair]
        pd, ld = int(info["pair_decimals"]), int(info["lot_decimals"])
        cost = self.vol_exec * self.avg_price
        fee = cost * Decimal(str(info["fees_maker"][0][1])) / 100
        out: dict[str, Any] = {
            "refid": None,
            "userref": self.userref,
            "status": self.status,
            "opentm": self.opentm,
            "starttm": 0,
            "expiretm": 0,
            "descr": {
                "pair": info["altname"],
                "type": self.side,
                "ordertype": self.ordertype,
                "price": _fmt(self.price, pd),
                "price2": "0",
                "leverage": "none",
                "order": f"{self.side} {_fmt(self.volume, ld)} {info['altname']} @ "
                f"{self.ordertype} {_fmt(self.price, pd)}",
                "close": "",
            },
            "vol": _fmt(self.volume, ld),
            "vol_exec": _fmt(self.vol_exec, ld),
            "cost": _fmt(cost, int(info["cost_decimals"])),
            "fee": _fmt(fee, int(info["cost_decimals"])),
            "price": _fmt(self.avg_price, pd),
            "stopprice": "0.00000",
            "limitprice": "0.00000",
            "misc": "",
            "oflags": self.oflags,
        }
        if self.cl_ord_id is not None:
            out["cl_ord_id"] = self.cl_ord_id
        if self.status != "open":
            out["reason"] = self.reason
            out["closetm"] = self.closetm
        return out


@dataclass
class _Account:
    secret: bytes
    last_nonce: int = 0


@dataclass
class FakeKraken:
    """The server; use `async with FakeKraken(api_key=..., api_secret=...) as kraken:`."""

    api_key: str
    api_secret: str  # base64, as Kraken hands it out
    books: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    balances: dict[str, Decimal] = field(default_factory=dict)
    orders: dict[str, FakeOrder] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    _faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    _accounts: dict[str, _Account] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _url: str = ""
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._accounts[self.api_key] = _Account(secret=base64.b64decode(self.api_secret))
        if not self.books:
            self.books = {p: (Decimal(b), Decimal(a)) for p, (b, a) in DEFAULT_BOOKS.items()}
        if not self.balances:
            self.balances = {k: Decimal(v) for k, v in DEFAULT_BALANCES.items()}

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/0/{kind}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._url = f"http://{host}:{port}"

    async def stop(self) -> None:
        self._stopping.set()  # wakes handlers held by a hang fault
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKraken:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return self._url

    @property
    def urls(self) -> dict[str, str]:
        """For ccxt's urls['api']."""
        return {"public": self._url, "private": self._url}

    # -- test controls -------------------------------------------------------------------

    def inject(self, endpoint: str, *faults: Fault) -> None:
        """Queue faults for the next requests to `endpoint` (e.g. 'AddOrder'), in order."""
        self._faults[endpoint].extend(faults)

    def calls(self, endpoint: str) -> list[Recorded]:
        return [r for r in self.requests if r.endpoint == endpoint]

    @property
    def private_requests(self) -> list[Recorded]:
        return [r for r in self.requests if "/private/" in r.path]

    def set_book(self, pair: str, bid: str, ask: str) -> None:
        self.books[self._pair_id(pair)] = (Decimal(bid), Decimal(ask))

    def open_orders(self) -> list[FakeOrder]:
        return [o for o in self.orders.values() if o.status == "open"]

    def fill(self, txid: str, volume: str | None = None) -> FakeOrder:
        """A trade against the order: all of it, or `volume` of it."""
        order = self.orders[txid]
        assert order.status == "open", f"{txid} is {order.status}"
        qty = order.volume - order.vol_exec if volume is None else Decimal(volume)
        self._execute(order, qty, order.price)
        return order

    # -- plumbing ------------------------------------------------------------------------

    def _pair_id(self, name: str) -> str:
        """A pair by id (XXBTZUSD), altname (XBTUSD) or wsname (XBT/USD)."""
        if name in PAIRS:
            return name
        for pid, info in PAIRS.items():
            if name in (info["altname"], info["wsname"]):
                return pid
        raise KrakenError("EQuery:Unknown asset pair")

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind, method = request.match_info["kind"], request.match_info["method"]
        body = await request.text() if request.method == "POST" else ""
        if kind == "private":
            fields = dict(parse_qsl(body, keep_blank_values=True))
        else:
            fields = dict(request.query)
        fault = self._faults[method].popleft() if self._faults.get(method) else None
        self.requests.append(
            Recorded(request.method, request.path, fields, fault.kind if fault else None)
        )

        if fault is not None and fault.kind == "http":
            return web.Response(status=fault.status, text=fault.body, content_type="text/html")
        if fault is not None and fault.kind == "error":
            return self._envelope(error=[fault.error])
        if fault is not None and fault.kind == "stale":
            return self._envelope(result=fault.result)
        if fault is not None and fault.kind == "hang":
            await self._wait(fault.seconds)
            return web.Response(status=504, text="gateway timeout")

        try:
            if kind == "public" and request.method == "GET":
                handler = getattr(self, f"_public_{method}", None)
                if handler is None:
                    raise KrakenError("EGeneral:Unknown method")
                result = handler(fields)
            elif kind == "private" and request.method == "POST":
                self._authenticate(request, body, fields)
                handler = getattr(self, f"_private_{method}", None)
                if handler is None:
                    raise KrakenError("EGeneral:Unknown method")
                result = handler(fields)
            else:
                raise KrakenError("EGeneral:Unknown method")
        except KrakenError as exc:
            response = self._envelope(error=[str(exc)])
        else:
            response = self._envelope(result=result)
        if fault is not None and fault.kind == "accept_then_hang":
            await self._wait(fault.seconds)
        return response

    @staticmethod
    def _envelope(*, error: list[str] | None = None, result: Any = None) -> web.Response:
        payload: dict[str, Any] = {"error": error or []}
        if not error:
            payload["result"] = result
        return web.Response(text=json.dumps(payload), content_type="application/json")

    def _authenticate(self, request: web.Request, body: str, fields: dict[str, str]) -> None:
        """Kraken's check of API-Key / API-Sign and of the nonce."""
        account = self._accounts.get(request.headers.get("API-Key", ""))
        if account is None:
            raise KrakenError("EAPI:Invalid key")
        nonce = fields.get("nonce", "")
        digest = hashlib.sha256((nonce + body).encode()).digest()
        mac = hmac.new(account.secret, request.path.encode() + digest, hashlib.sha512)
        expected = base64.b64encode(mac.digest()).decode()
        if not hmac.compare_digest(expected, request.headers.get("API-Sign", "")):
            raise KrakenError("EAPI:Invalid key")
        if not nonce.isdigit() or int(nonce) <= account.last_nonce:
            raise KrakenError("EAPI:Invalid nonce")
        account.last_nonce = int(nonce)

    # -- public endpoints ----------------------------------------------------------------

    def _public_Time(self, fields: dict[str, str]) -> Any:
        now = int(time.time())
        return {
            "unixtime": now,
            "rfc1123": time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(now)),
        }

    def _public_SystemStatus(self, fields: dict[str, str]) -> Any:
        return {"status": "online", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _public_Assets(self, fields: dict[str, str]) -> Any:
        return ASSETS

    def _public_AssetPairs(self, fields: dict[str, str]) -> Any:
        if "pair" in fields:
            return {p: PAIRS[p] for p in (self._pair_id(n) for n in fields["pair"].split(","))}
        return PAIRS

    def _public_Ticker(self, fields: dict[str, str]) -> Any:
        names = fields.get("pair", "").split(",") if fields.get("pair") else list(PAIRS)
        out = {}
        for pid in (self._pair_id(n) for n in names):
            bid, ask = self.books[pid]
            mid = (bid + ask) / 2
            pd = int(PAIRS[pid]["pair_decimals"])
            out[pid] = {
                "a": [_fmt(ask, pd), "1", "1.000"],
                "b": [_fmt(bid, pd), "2", "2.000"],
                "c": [_fmt(mid, pd), "0.00100000"],
                "v": ["1000.00000000", "2000.00000000"],
                "p": [_fmt(mid, pd), _fmt(mid, pd)],
                "t": [1000, 2000],
                "l": [_fmt(bid * Decimal("0.99"), pd), _fmt(bid * Decimal("0.98"), pd)],
                "h": [_fmt(ask * Decimal("1.01"), pd), _fmt(ask * Decimal("1.02"), pd)],
                "o": _fmt(mid, pd),
            }
        return out

    # -- private endpoints ---------------------------------------------------------------

    def _held(self, asset: str) -> Decimal:
        """Base asset reserved by open sells (the fake only books sells against balances)."""
        return sum(
            (
                o.volume - o.vol_exec
                for o in self.open_orders()
                if o.side == "sell" and PAIRS[o.pair]["base"] == asset
            ),
            Decimal(0),
        )

    def _private_Balance(self, fields: dict[str, str]) -> Any:
        return {a: _fmt(v, int(ASSETS[a]["decimals"])) for a, v in self.balances.items()}

    def _private_BalanceEx(self, fields: dict[str, str]) -> Any:
        return {
            a: {
                "balance": _fmt(v, int(ASSETS[a]["decimals"])),
                "hold_trade": _fmt(self._held(a), int(ASSETS[a]["decimals"])),
            }
            for a, v in self.balances.items()
        }

    def _private_AddOrder(self, fields: dict[str, str]) -> Any:
        for required in ("pair", "type", "ordertype", "volume"):
            if required not in fields:
                raise KrakenError(f"EGeneral:Invalid arguments:{required}")
        pid = self._pair_id(fields["pair"])
        info = PAIRS[pid]
        side, ordertype = fields["type"], fields["ordertype"]
        if side not in ("buy", "sell"):
            raise KrakenError("EGeneral:Invalid arguments:type")
        if ordertype != "limit":
            raise KrakenError("EGeneral:Invalid arguments:ordertype")
        try:
            if _decimals(fields["volume"]) > int(info["lot_decimals"]):
                raise KrakenError("EGeneral:Invalid arguments:volume")
            volume = Decimal(fields["volume"])
        except InvalidOperation:
            raise KrakenError("EGeneral:Invalid arguments:volume") from None
        try:
            price_text = fields["price"]
            if _decimals(price_text) > int(info["pair_decimals"]):
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
        oflags = [f for f in fields.get("oflags", "").split(",") if f]
        cl_ord_id = fields.get("cl_ord_id")
        if cl_ord_id is not None and any(o.cl_ord_id == cl_ord_id for o in self.open_orders()):
            raise KrakenError(DUPLICATE_CL_ORD_ID)
        bid, ask = self.books[pid]
        crosses = price <= bid if side == "sell" else price >= ask
        if crosses and "post" in oflags:
            raise KrakenError(POST_ONLY_REFUSED)
        if side == "sell":
            base = info["base"]
            if volume > self.balances.get(base, Decimal(0)) - self._held(base):
                raise KrakenError("EOrder:Insufficient funds")
        txid = self._new_txid()
        order = FakeOrder(
            txid=txid,
            pair=pid,
            side=side,
            ordertype=ordertype,
            price=price,
            volume=volume,
            cl_ord_id=cl_ord_id,
            userref=int(fields["userref"]) if "userref" in fields else None,
            oflags=",".join(oflags) or "fciq",
            opentm=round(time.time(), 6),
        )
        self.orders[txid] = order
        if crosses:  # a taker: fills at once against the top of the book
            self._execute(order, volume, bid if side == "sell" else ask)
        pd, ld = int(info["pair_decimals"]), int(info["lot_decimals"])
        return {
            "descr": {
                "order": f"{side} {_fmt(volume, ld)} {info['altname']} @ limit {_fmt(price, pd)}"
            },
            "txid": [txid],
        }

    def _private_CancelOrder(self, fields: dict[str, str]) -> Any:
        order: FakeOrder | None = None
        if "cl_ord_id" in fields:
            order = next(
                (o for o in self.open_orders() if o.cl_ord_id == fields["cl_ord_id"]), None
            )
        elif "txid" in fields:
            order = self.orders.get(fields["txid"])
        else:
            raise KrakenError("EGeneral:Invalid arguments")
        if order is None or order.status != "open":
            raise KrakenError("EOrder:Unknown order")
        order.status = "canceled"
        order.reason = "User requested"
        order.closetm = round(time.time(), 6)
        return {"count": 1}

    def _private_QueryOrders(self, fields: dict[str, str]) -> Any:
        txids = [t for t in fields.get("txid", "").split(",") if t]
        if not txids:
            raise KrakenError("EGeneral:Invalid arguments")
        out = {}
        for txid in txids:
            order = self.orders.get(txid)
            if order is None:
                raise KrakenError("EOrder:Invalid order")
            out[txid] = order.to_kraken()
        return out

    def _filtered(self, orders: list[FakeOrder], fields: dict[str, str]) -> list[FakeOrder]:
        if "cl_ord_id" in fields:
            orders = [o for o in orders if o.cl_ord_id == fields["cl_ord_id"]]
        if "userref" in fields:
            orders = [o for o in orders if o.userref == int(fields["userref"])]
        return orders

    def _private_OpenOrders(self, fields: dict[str, str]) -> Any:
        orders = self._filtered(self.open_orders(), fields)
        return {"open": {o.txid: o.to_kraken() for o in orders}}

    def _private_ClosedOrders(self, fields: dict[str, str]) -> Any:
        closed = [o for o in self.orders.values() if o.status != "open"]
        closed = self._filtered(closed, fields)
        closed.sort(key=lambda o: o.closetm or 0, reverse=True)
        return {"closed": {o.txid: o.to_kraken() for o in closed[:50]}, "count": len(closed)}

    # -- matching ------------------------------------------------------------------------

    def _execute(self, order: FakeOrder, qty: Decimal, price: Decimal) -> None:
        info = PAIRS[order.pair]
        base, quote = info["base"], info["quote"]
        notional = qty * price
        total = order.avg_price * order.vol_exec + notional
        order.vol_exec += qty
        order.avg_price = total / order.vol_exec
        sign = Decimal(-1) if order.side == "sell" else Decimal(1)
        self.balances[base] = self.balances.get(base, Decimal(0)) + sign * qty
        self.balances[quote] = self.balances.get(quote, Decimal(0)) - sign * notional
        if order.vol_exec >= order.volume:
            order.status = "closed"
            order.closetm = round(time.time(), 6)

    @staticmethod
    def _new_txid() -> str:
        chars = string.ascii_uppercase + string.digits
        parts = ("".join(random.choices(chars, k=n)) for n in (5, 5, 6))
        return "O" + "-".join(parts)
