"""A local stand-in for Kraken's spot REST API, for tests that drive the real ccxt client.

It speaks what ccxt's kraken client calls, with Kraken's paths (/0/public/..., /0/private/...),
its JSON envelope {"error": [...], "result": ...}, its pair/asset/order shapes and its
error strings (tests/fake_kraken_data.py). Private calls are POSTs, form-encoded (or
JSON for AddOrderBatch), signed the way Kraken checks them:
API-Sign = base64(HMAC-SHA512(uri path + SHA256(nonce + post data), base64-decoded secret)),
with a strictly increasing nonce per key. Several keys may share the account (mmops and
"the trader"): they share its balances, orders and limits.

Modelled as an order placer meets it:
- each pair's trading counter: +1 per order placed, + a penalty by the order's age per
  cancel, linear decay; above the tier's threshold `EOrder:Rate limit exceeded`;
- the per-pair open-order cap (`EOrder:Orders limit exceeded`);
- cl_ord_id: Kraken's three forms, unique among OPEN orders only; the cl_ord_id filter
  of OpenOrders and ClosedOrders (and `start` of ClosedOrders);
- AddOrderBatch: 2-15 orders of one pair; a validation error refuses the whole batch,
  an engine check (rate, cap, duplicate id, post-only, funds) refuses one order;
- a post-only sell at or below the best bid refused, sells limited by the free base
  balance, CancelOrder of a closed order answered with "EOrder:Unknown order".
Assumptions where Kraken documents nothing: only accepted orders count (+1), and a
refused cancel adds nothing.

For tests: every request is recorded (path, decoded fields, key, the errors answered),
and `inject` queues faults per endpoint (HTTP 5xx, a Kraken error, a stale canned
answer, a response slower than the client's timeout, or "accept the order, then be too
slow to answer"). `python -m tests.fake_kraken_cli` runs it by hand (see the README).
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
from decimal import Decimal
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.fake_kraken_data import (
    ASSETS,
    DEFAULT_BALANCES,
    DEFAULT_BOOKS,
    DUPLICATE_CL_ORD_ID,
    INSUFFICIENT_FUNDS,
    ORDERS_LIMITED,
    PAIRS,
    POST_ONLY_REFUSED,
    RATE_LIMITED,
    STARTER,
    UNKNOWN_ORDER,
    Counter,
    FakeOrder,
    Fault,
    KrakenError,
    Limits,
    Recorded,
    Spec,
    cancel_penalty,
    describe,
    fmt,
    ticker_entry,
    validate_order,
)

BATCH_MIN, BATCH_MAX = 2, 15


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
    limits: Limits = STARTER
    ignore_client_id_filter: bool = False  # behave like an exchange without the filter
    counters: dict[str, Counter] = field(default_factory=dict)
    _faults: dict[str, deque[Fault]] = field(default_factory=lambda: defaultdict(deque))
    _accounts: dict[str, _Account] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    _url: str = ""
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.add_key(self.api_key, self.api_secret)
        if not self.books:
            self.books = {p: (Decimal(b), Decimal(a)) for p, (b, a) in DEFAULT_BOOKS.items()}
        if not self.balances:
            self.balances = {k: Decimal(v) for k, v in DEFAULT_BALANCES.items()}

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/0/{kind}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self._url = f"http://{bound_host}:{bound_port}"

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
        """The base URL: what EXCHANGE_API_URL is set to."""
        return self._url

    # -- test controls -------------------------------------------------------------------

    def add_key(self, api_key: str, api_secret: str) -> None:
        """Another API key on the same account (e.g. the trader's)."""
        self._accounts[api_key] = _Account(secret=base64.b64decode(api_secret))

    def inject(self, endpoint: str, *faults: Fault) -> None:
        """Queue faults for the next requests to `endpoint` (e.g. 'AddOrder'), in order."""
        self._faults[endpoint].extend(faults)

    def calls(self, endpoint: str) -> list[Recorded]:
        return [r for r in self.requests if r.endpoint == endpoint]

    @property
    def private_requests(self) -> list[Recorded]:
        return [r for r in self.requests if "/private/" in r.path]

    def replies(self, error: str, *, key: str | None = None) -> int:
        """How many times the server answered `error` (to `key`), batch orders included."""
        return sum(r.errors.count(error) for r in self.requests if key is None or r.key == key)

    def set_book(self, pair: str, bid: str, ask: str) -> None:
        self.books[self._pair_id(pair)] = (Decimal(bid), Decimal(ask))

    def open_orders(self, pair: str | None = None) -> list[FakeOrder]:
        pid = None if pair is None else self._pair_id(pair)
        return [o for o in self.orders.values() if o.status == "open" and pid in (None, o.pair)]

    def counter(self, pair: str) -> Counter:
        pid = self._pair_id(pair)
        if pid not in self.counters:
            self.counters[pid] = Counter(self.limits, at=time.monotonic())
        return self.counters[pid]

    def trader_spend(self, pair: str, cost: float) -> bool:
        """Someone else on the account spends the pair's counter (False: refused)."""
        counter, now = self.counter(pair), time.monotonic()
        if not counter.fits(cost, now):
            counter.refused += 1
            return False
        counter.add(cost, now)
        return True

    def fill(self, txid: str, volume: str | None = None) -> FakeOrder:
        """A trade against the order: all of it, or `volume` of it."""
        order = self.orders[txid]
        assert order.status == "open", f"{txid} is {order.status}"
        qty = order.volume - order.vol_exec if volume is None else Decimal(volume)
        self._execute(order, qty, order.price)
        return order

    # -- plumbing ------------------------------------------------------------------------

    def _pair_id(self, name: str) -> str:
        """A pair by id (XXBTZUSD), altname (XBTUSD) or wsname (XBT/USD, also BTC/USD)."""
        if name in PAIRS:
            return name
        name = "XBT" + name[3:] if name.startswith("BTC") else name
        for pid, info in PAIRS.items():
            if name in (info["altname"], info["wsname"]):
                return pid
        raise KrakenError("EQuery:Unknown asset pair")

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind, method = request.match_info["kind"], request.match_info["method"]
        raw = await request.text() if request.method == "POST" else ""
        body: Any = None
        if kind != "private":
            fields = dict(request.query)
        elif request.content_type == "application/json":
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
            members = body if isinstance(body, dict) else {}
            fields = {k: str(v) for k, v in members.items() if not isinstance(v, list | dict)}
        else:
            fields = dict(parse_qsl(raw, keep_blank_values=True))
        fault = self._faults[method].popleft() if self._faults.get(method) else None
        rec = Recorded(
            request.method,
            request.path,
            fields,
            fault.kind if fault else None,
            body=body,
            key=request.headers.get("API-Key", ""),
        )
        self.requests.append(rec)

        if fault is not None and fault.kind == "http":
            return web.Response(status=fault.status, text=fault.body, content_type="text/html")
        if fault is not None and fault.kind == "error":
            rec.errors.append(fault.error)
            return self._envelope(rec, error=[fault.error])
        if fault is not None and fault.kind == "stale":
            return self._envelope(rec, result=fault.result)
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
                self._authenticate(request, raw, fields)
                handler = getattr(self, f"_private_{method}", None)
                if handler is None:
                    raise KrakenError("EGeneral:Unknown method")
                result = handler(rec)
            else:
                raise KrakenError("EGeneral:Unknown method")
        except KrakenError as exc:
            rec.errors.append(str(exc))
            response = self._envelope(rec, error=[str(exc)])
        else:
            response = self._envelope(rec, result=result)
        if fault is not None and fault.kind == "accept_then_hang":
            await self._wait(fault.seconds)
        return response

    @staticmethod
    def _envelope(
        rec: Recorded, *, error: list[str] | None = None, result: Any = None
    ) -> web.Response:
        payload: dict[str, Any] = {"error": error or []}
        if not error:
            payload["result"] = result
        rec.answer = payload
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
            out[pid] = ticker_entry(pid, *self.books[pid])
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

    def _private_Balance(self, rec: Recorded) -> Any:
        return {a: fmt(v, int(ASSETS[a]["decimals"])) for a, v in self.balances.items()}

    def _private_BalanceEx(self, rec: Recorded) -> Any:
        return {
            a: {
                "balance": fmt(v, int(ASSETS[a]["decimals"])),
                "hold_trade": fmt(self._held(a), int(ASSETS[a]["decimals"])),
            }
            for a, v in self.balances.items()
        }

    def _private_AddOrder(self, rec: Recorded) -> Any:
        if "pair" not in rec.fields:
            raise KrakenError("EGeneral:Invalid arguments:pair")
        spec = validate_order(self._pair_id(rec.fields["pair"]), rec.fields)
        order = self._engine(spec, rec.key)
        return {"descr": {"order": describe(spec)}, "txid": [order.txid]}

    def _private_AddOrderBatch(self, rec: Recorded) -> Any:
        body = rec.body if isinstance(rec.body, dict) else {}
        orders = body.get("orders")
        if not isinstance(orders, list) or "pair" not in body:
            raise KrakenError("EGeneral:Invalid arguments")
        if not BATCH_MIN <= len(orders) <= BATCH_MAX:
            raise KrakenError("EGeneral:Invalid arguments:orders")
        pid = self._pair_id(str(body["pair"]))
        # validation covers the whole batch: one bad order refuses them all
        specs = [validate_order(pid, o if isinstance(o, dict) else {}) for o in orders]
        answers: list[dict[str, Any]] = []
        for spec in specs:
            try:
                order = self._engine(spec, rec.key)
            except KrakenError as exc:  # an engine check refuses this order only
                rec.errors.append(str(exc))
                answers.append({"error": str(exc), "descr": {"order": describe(spec)}})
            else:
                answers.append({"txid": order.txid, "descr": {"order": describe(spec)}})
        return {"orders": answers}

    def _private_CancelOrder(self, rec: Recorded) -> Any:
        fields = rec.fields
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
            raise KrakenError(UNKNOWN_ORDER)
        penalty = cancel_penalty(time.time() - order.opentm)
        counter, now = self.counter(order.pair), time.monotonic()
        if not counter.fits(penalty, now):
            counter.refused += 1
            raise KrakenError(RATE_LIMITED)
        counter.add(penalty, now)
        order.status = "canceled"
        order.reason = "User requested"
        order.closetm = round(time.time(), 6)
        return {"count": 1}

    def _private_QueryOrders(self, rec: Recorded) -> Any:
        txids = [t for t in rec.fields.get("txid", "").split(",") if t]
        if not txids:
            raise KrakenError("EGeneral:Invalid arguments")
        out = {}
        for txid in txids:
            order = self.orders.get(txid)
            if order is None:
                raise KrakenError("EOrder:Invalid order")
            trades = rec.fields.get("trades", "").lower() == "true"
            out[txid] = order.to_kraken(query=True, trades=trades)
        return out

    def _filtered(self, orders: list[FakeOrder], fields: dict[str, str]) -> list[FakeOrder]:
        if "cl_ord_id" in fields and not self.ignore_client_id_filter:
            orders = [o for o in orders if o.cl_ord_id == fields["cl_ord_id"]]
        if "userref" in fields:
            orders = [o for o in orders if o.userref == int(fields["userref"])]
        return orders

    def _private_OpenOrders(self, rec: Recorded) -> Any:
        orders = self._filtered(self.open_orders(), rec.fields)
        return {"open": {o.txid: o.to_kraken() for o in orders}}

    def _private_ClosedOrders(self, rec: Recorded) -> Any:
        closed = [o for o in self.orders.values() if o.status != "open"]
        closed = self._filtered(closed, rec.fields)
        start = rec.fields.get("start", "")
        if start.replace(".", "", 1).isdigit():  # a unix time (exclusive); both open and close
            since = float(start)
            closed = [o for o in closed if o.opentm > since or (o.closetm or 0) > since]
        closed.sort(key=lambda o: o.closetm or 0, reverse=True)
        return {"closed": {o.txid: o.to_kraken() for o in closed[:50]}, "count": len(closed)}

    # -- the order rules -----------------------------------------------------------------

    def _engine(self, spec: Spec, key: str) -> FakeOrder:
        """The matching engine's checks and booking of one order."""
        counter, now = self.counter(spec.pair), time.monotonic()
        if not counter.fits(1, now):
            counter.refused += 1
            raise KrakenError(RATE_LIMITED)
        if len(self.open_orders(spec.pair)) >= self.limits.max_open:
            raise KrakenError(ORDERS_LIMITED)
        if spec.cl_ord_id is not None and any(
            o.cl_ord_id == spec.cl_ord_id for o in self.open_orders()
        ):
            raise KrakenError(DUPLICATE_CL_ORD_ID)
        bid, ask = self.books[spec.pair]
        crosses = spec.price <= bid if spec.side == "sell" else spec.price >= ask
        if crosses and "post" in spec.oflags:
            raise KrakenError(POST_ONLY_REFUSED)
        if spec.side == "sell":
            base = PAIRS[spec.pair]["base"]
            if spec.volume > self.balances.get(base, Decimal(0)) - self._held(base):
                raise KrakenError(INSUFFICIENT_FUNDS)
        order = FakeOrder(
            txid=self._new_txid(),
            pair=spec.pair,
            side=spec.side,
            ordertype=spec.ordertype,
            price=spec.price,
            volume=spec.volume,
            cl_ord_id=spec.cl_ord_id,
            userref=spec.userref,
            oflags=",".join(spec.oflags) or "fciq",
            opentm=round(time.time(), 6),
            owner=key,
        )
        self.orders[order.txid] = order
        counter.add(1, now)
        if crosses:  # a taker: fills at once against the top of the book
            self._execute(order, spec.volume, bid if spec.side == "sell" else ask)
        return order

    # -- matching ------------------------------------------------------------------------

    def _execute(self, order: FakeOrder, qty: Decimal, price: Decimal) -> None:
        info = PAIRS[order.pair]
        base, quote = info["base"], info["quote"]
        notional = qty * price
        total = order.avg_price * order.vol_exec + notional
        order.vol_exec += qty
        order.avg_price = total / order.vol_exec
        order.trades.append("T" + self._new_txid()[1:])
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
