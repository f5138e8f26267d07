"""The Exchange Protocol on top of a ccxt async client (Kraken by default).

Every exchange call goes through `_call`: the circuit breaker (when given), ccxt's
errors translated into trading.exchange's classes, and retries of transient failures
with exponential backoff and full jitter. Money stays Decimal: numbers coming from
ccxt are converted with Decimal(str(x)); prices and amounts go out as exact strings.

Placing an order is not idempotent: a timeout may hide an accepted order. So before
each retry of a place, the client order id is looked up, and an order found is
returned instead of placing a second one.

API keys are only handed to ccxt; they never appear in a log line or an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import aiohttp
import ccxt
import ccxt.async_support as ccxt_async
from ccxt.base.decimal_to_precision import DECIMAL_PLACES, TICK_SIZE

from trading.breaker import CircuitBreaker
from trading.exchange import (
    BadSymbol,
    CircuitOpen,
    DuplicateClientId,
    ExchangeError,
    InsufficientFunds,
    Market,
    Order,
    OrderNotFound,
    OrderStatus,
    PermanentError,
    PostOnlyRejected,
    Quote,
    SellRequest,
    TransientError,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

# ccxt logs every request with its headers (API-Key, API-Sign) at DEBUG. Its instances get
# this logger instead, which never emits below INFO, whatever the root level is.
_WIRE_LOG = logging.getLogger(f"{__name__}.wire")
_WIRE_LOG.setLevel(logging.INFO)

_BACKOFF_CAP = 10.0  # seconds, upper bound of one backoff sleep

# Kraken error strings, e.g. "EOrder:Insufficient funds", as found in ccxt's messages.
_KRAKEN_ERROR = re.compile(
    r"\b[EW](?:General|API|Query|Order|Trade|Funding|Service|Auth|Database|Session|Account|Budget)"
    r":[^\"'\[\],}]*"
)
# ccxt's message for an HTTP error status: "<id> <METHOD> <url> <status> <reason> <body>".
_HTTP_STATUS = re.compile(r"\b(?:GET|POST|PUT|DELETE) \S+ ([1-5]\d\d)\b")
# Kraken errors that mean "not now" rather than "no": the outcome of the call is unknown.
_TRANSIENT_PREFIXES = (
    "EService:",
    "EDatabase:Internal error",
    "EGeneral:Internal error",
    "EGeneral:Too many requests",
    "EGeneral:Temporary lockout",
    "EAPI:Rate limit exceeded",
    "EOrder:Rate limit exceeded",
    "EAPI:Invalid nonce",
)

_STATUSES = {
    "open": OrderStatus.OPEN,
    "closed": OrderStatus.CLOSED,
    "canceled": OrderStatus.CANCELED,
    "cancelled": OrderStatus.CANCELED,
    "expired": OrderStatus.CANCELED,
    "rejected": OrderStatus.REJECTED,
}

Sleep = Callable[[float], Awaitable[None]]


def _dec(value: Any) -> Decimal:
    """A ccxt number (float, int or str) as an exact Decimal of its shortest repr."""
    if isinstance(value, Decimal):
        return value
    if value is None or isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, float) and value.is_integer():
        return Decimal(int(value))  # 100.0 -> 100, not 100.0
    return Decimal(str(value))


def _dec_or(value: Any, default: Decimal) -> Decimal:
    return default if value is None else _dec(value)


def _plain(value: Decimal) -> str:
    """Fixed-point text, never exponent notation (Decimal('1E-8') -> '0.00000001')."""
    return format(value, "f")


class CcxtExchange:
    """An Exchange backed by `ccxt.async_support.<exchange_id>` (see module docstring)."""

    def __init__(
        self,
        *,
        exchange_id: str = "kraken",
        api_key: str | None = None,
        api_secret: str | None = None,
        maker_fee: Decimal | None = None,
        urls: Mapping[str, str] | None = None,
        breaker: CircuitBreaker | None = None,
        max_tries: int = 3,
        backoff_base: float = 0.2,
        sleep: Sleep = asyncio.sleep,
        timeout_ms: int = 10_000,
        ccxt_config: Mapping[str, Any] | None = None,
    ) -> None:
        if max_tries < 1:
            raise ValueError("max_tries must be at least 1")
        klass = getattr(ccxt_async, exchange_id, None)
        if klass is None:
            raise ValueError(f"unknown ccxt exchange id: {exchange_id!r}")
        config: dict[str, Any] = {
            **(ccxt_config or {}),
            "enableRateLimit": True,
            "timeout": timeout_ms,
            "logger": _WIRE_LOG,
            "verbose": False,  # verbose mode prints request headers, API key included
        }
        if api_key is not None:
            config["apiKey"] = api_key
        if api_secret is not None:
            config["secret"] = api_secret
        self._client: Any = klass(config)
        if urls:
            self._client.urls = {**self._client.urls, "api": {**self._client.urls["api"], **urls}}
        self.name: str = exchange_id
        self._secrets = tuple(s for s in (api_key, api_secret) if s and len(s) >= 4)
        self._maker_fee = maker_fee
        self._breaker = breaker
        self._max_tries = max_tries
        self._backoff_base = backoff_base
        self._sleep = sleep
        self._rng = random.Random()
        self._markets_lock = asyncio.Lock()
        self._markets_loaded = False
        self._markets: dict[str, Market] = {}

    # -- the Exchange Protocol ------------------------------------------------------------

    async def market(self, symbol: str) -> Market:
        """Trading rules of `symbol`, parsed once from ccxt's market into Decimals."""
        cached = self._markets.get(symbol)
        if cached is not None:
            return cached
        await self._ensure_markets()
        raw = self._client.markets.get(symbol) if self._client.markets else None
        if raw is None:
            raise BadSymbol(f"{self.name} market: unknown symbol {symbol!r}")
        parsed = self._to_market(symbol, raw)
        self._markets[symbol] = parsed
        return parsed

    async def place_limit_sells(
        self, requests: Sequence[SellRequest]
    ) -> list[Order | ExchangeError]:
        """One request after the other (a batched form is an optimisation of this)."""
        out: list[Order | ExchangeError] = []
        for r in requests:
            try:
                out.append(
                    await self.place_limit_sell(
                        symbol=r.symbol,
                        amount=r.amount,
                        price=r.price,
                        client_id=r.client_id,
                        post_only=r.post_only,
                    )
                )
            except ExchangeError as exc:
                out.append(exc)
        return out

    async def place_limit_sell(
        self,
        *,
        symbol: str,
        amount: Decimal,
        price: Decimal,
        client_id: str,
        post_only: bool = True,
    ) -> Order:
        """Place a limit sell carrying `client_id`; never places it twice (see module doc)."""
        await self.market(symbol)
        what = f"place_limit_sell {symbol} {client_id}"
        amount_s, price_s = self._wire_values(what, symbol, amount, price)
        params: dict[str, Any] = {"clientOrderId": client_id}
        if post_only:
            params["postOnly"] = True
        tries = 0

        async def place() -> Order:
            nonlocal tries
            tries += 1
            raw = await self._client.create_order(
                symbol, "limit", "sell", amount_s, price_s, dict(params)
            )
            # Kraken's AddOrder answer has no client id, status or fill: fill in what we sent.
            return self._to_order(
                raw, client_id=client_id, symbol=symbol, side="sell", price=price, amount=amount
            )

        async def placed_before() -> Order | None:
            return await self._find_by_client_id(symbol, client_id)

        try:
            return await self._call(what, place, before_retry=placed_before)
        except PermanentError:
            if tries <= 1:
                raise
            # A refusal after a failed try (a duplicate client id, or funds now held by
            # our own order) may mean that try reached the exchange after all.
            found = await self._call(
                f"fetch_order_by_client_id {symbol} {client_id}", placed_before
            )
            if found is None:
                raise
            return found

    async def cancel_order(self, *, symbol: str, order_id: str) -> Order:
        """Cancel, then return the order as the exchange has it now.

        An order that had already filled (or was cancelled before) cannot be cancelled:
        Kraken answers "EOrder:Unknown order"; its final state is returned all the same.
        """
        await self.market(symbol)
        with contextlib.suppress(OrderNotFound):  # closed already, or unknown: fetch tells
            await self._call(
                f"cancel_order {symbol} {order_id}",
                lambda: self._client.cancel_order(order_id, symbol),
            )
        order = await self.fetch_order(symbol=symbol, order_id=order_id)
        if order is None:
            raise OrderNotFound(f"{self.name} cancel_order {symbol}: no order {order_id}")
        return order

    async def fetch_order(self, *, symbol: str, order_id: str) -> Order | None:
        await self.market(symbol)
        try:
            raw = await self._call(
                f"fetch_order {symbol} {order_id}",
                lambda: self._client.fetch_order(order_id, symbol),
                lookup=True,
            )
        except OrderNotFound:
            return None
        return self._to_order(raw)

    async def fetch_order_by_client_id(self, *, symbol: str, client_id: str) -> Order | None:
        """The order placed with `client_id`: open orders first, then closed ones."""
        await self.market(symbol)
        return await self._call(
            f"fetch_order_by_client_id {symbol} {client_id}",
            lambda: self._find_by_client_id(symbol, client_id),
        )

    async def open_orders(self, symbol: str | None = None) -> list[Order]:
        if symbol is not None:
            await self.market(symbol)
        else:
            await self._ensure_markets()
        raws = await self._call(
            f"open_orders {symbol or '*'}", lambda: self._client.fetch_open_orders(symbol)
        )
        return [self._to_order(raw) for raw in raws]

    async def free_balance(self, asset: str) -> Decimal:
        await self._ensure_markets()
        balance = await self._call(f"free_balance {asset}", lambda: self._client.fetch_balance())
        free = (balance.get("free") or {}).get(asset)
        return Decimal(0) if free is None else _dec(free)

    async def quote(self, symbol: str) -> Quote:
        await self.market(symbol)
        what = f"quote {symbol}"
        ticker = await self._call(what, lambda: self._client.fetch_ticker(symbol))
        bid, ask = ticker.get("bid"), ticker.get("ask")
        if bid is None or ask is None:
            raise PermanentError(f"{self.name} {what}: the ticker has no bid/ask")
        return Quote(bid=_dec(bid), ask=_dec(ask))

    async def observe_fill(
        self,
        *,
        fill_id: str,
        order_id: str,
        symbol: str,
        side: str,
        price: Decimal,
        quantity: Decimal,
    ) -> None:
        """Nothing to do: a real exchange moves its own balances."""

    async def close(self) -> None:
        await self._client.close()

    # -- the one place for breaker, error translation and retries -------------------------

    async def _call(
        self,
        what: str,
        fn: Callable[[], Awaitable[T]],
        *,
        before_retry: Callable[[], Awaitable[T | None]] | None = None,
        lookup: bool = False,
    ) -> T:
        """Run `fn` with retries of transient failures, at most `max_tries` tries in total.

        `before_retry`, when given, runs before every retry; a non-None result is returned
        instead of retrying (placing uses it to find an order a failed try did place). A
        transient failure of `before_retry` itself counts as a failed try.
        """
        last: TransientError | None = None
        for attempt in range(1, self._max_tries + 1):
            try:
                if attempt > 1 and before_retry is not None:
                    found = await self._once(what, before_retry, lookup=lookup)
                    if found is not None:
                        log.info(
                            "found the result of an earlier try",
                            extra={"exchange": self.name, "call": what, "attempt": attempt},
                        )
                        return found
                return await self._once(what, fn, lookup=lookup)
            except CircuitOpen as exc:
                raise CircuitOpen(self._scrub(f"{self.name} {what}: {exc}")) from None
            except TransientError as exc:
                last = exc
                if attempt >= self._max_tries:
                    break
                delay = self._rng.uniform(
                    0.0, min(_BACKOFF_CAP, self._backoff_base * 2 ** (attempt - 1))
                )
                log.warning(
                    "transient exchange error, retrying",
                    extra={
                        "exchange": self.name,
                        "call": what,
                        "attempt": attempt,
                        "error": str(exc),
                    },
                )
                await self._sleep(delay)
        tries = "1 try" if self._max_tries == 1 else f"{self._max_tries} tries"
        raise TransientError(f"{last} (gave up after {tries})") from None

    async def _once(self, what: str, fn: Callable[[], Awaitable[T]], *, lookup: bool = False) -> T:
        """One try of `fn` through the breaker, with ccxt's errors translated."""

        async def translated() -> T:
            try:
                # ccxt's decimal_to_precision sets ROUND_HALF_UP on the current decimal
                # context: keep that change inside this call.
                with decimal.localcontext():
                    return await fn()
            except ccxt.BaseError as exc:
                raise self._translate(what, exc, lookup=lookup) from None

        if self._breaker is None:
            return await translated()
        return await self._breaker.call(translated)

    def _translate(self, what: str, exc: BaseException, *, lookup: bool = False) -> ExchangeError:
        """ccxt's exception as one of ours, with a one-line secrets-free message."""
        text = str(exc)
        codes = [c.strip() for c in _KRAKEN_ERROR.findall(text)]
        detail = type(exc).__name__
        status = _HTTP_STATUS.search(text)
        if status:
            detail += f" HTTP {status.group(1)}"
        if codes:
            detail += f" {'; '.join(codes)}"
        message = self._scrub(f"{self.name} {what}: {detail}")
        lowered = " ".join(codes).lower()

        if isinstance(exc, ccxt.NetworkError | ccxt.CancelPending):
            return TransientError(message)
        if isinstance(exc, ccxt.ExchangeError) and isinstance(exc.__cause__, aiohttp.ClientError):
            return TransientError(message)  # e.g. a truncated response body
        if any(c.startswith(_TRANSIENT_PREFIXES) for c in codes):
            return TransientError(message)
        if isinstance(exc, ccxt.InsufficientFunds):
            return InsufficientFunds(message)
        if isinstance(exc, ccxt.OrderImmediatelyFillable) or "post only" in lowered:
            return PostOnlyRejected(message)
        if "duplicate" in lowered:
            return DuplicateClientId(message)
        if isinstance(exc, ccxt.BadSymbol):
            return BadSymbol(message)
        if isinstance(exc, ccxt.OrderNotFound) or "eorder:unknown order" in lowered:
            return OrderNotFound(message)
        if lookup and "eorder:invalid order" in lowered:
            return OrderNotFound(message)  # QueryOrders' answer for an id it does not know
        return PermanentError(message)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return " ".join(text.split())[:500]

    # -- helpers -------------------------------------------------------------------------

    async def _ensure_markets(self) -> None:
        """Load ccxt's markets once, on first use; concurrent first calls wait for it."""
        if self._markets_loaded:
            return
        async with self._markets_lock:
            if self._markets_loaded:
                return
            await self._call("load_markets", lambda: self._client.load_markets())
            self._markets_loaded = True

    async def _find_by_client_id(self, symbol: str, client_id: str) -> Order | None:
        """Kraken filters OpenOrders/ClosedOrders by cl_ord_id (ccxt: params.clientOrderId)."""
        params = {"clientOrderId": client_id}
        for fetch in (self._client.fetch_open_orders, self._client.fetch_closed_orders):
            raws = await fetch(symbol, None, None, dict(params))
            # The server filtered already; an order that names another client id is not ours.
            mine = [r for r in raws if r.get("clientOrderId") in (None, client_id)]
            if mine:
                newest = max(mine, key=lambda r: r.get("timestamp") or 0)
                return self._to_order(newest, client_id=client_id)
        return None

    def _wire_values(
        self, what: str, symbol: str, amount: Decimal, price: Decimal
    ) -> tuple[str, str]:
        """(amount, price) as exact strings; refuse values ccxt would round on the way out.

        The caller rounds to the market's steps. ccxt formats again (truncating amounts,
        rounding prices); if that would change a value, the order is not the one meant.
        """
        if amount <= 0 or price <= 0:
            raise PermanentError(f"{self.name} {what}: amount and price must be positive")
        amount_s, price_s = _plain(amount), _plain(price)
        try:
            with decimal.localcontext():
                sent_amount = self._client.amount_to_precision(symbol, amount_s)
                sent_price = self._client.price_to_precision(symbol, price_s)
        except ccxt.BaseError as exc:
            raise self._translate(what, exc) from None
        if Decimal(sent_amount) != amount:
            raise PermanentError(
                f"{self.name} {what}: amount {amount_s} is not a multiple of the lot"
            )
        if Decimal(sent_price) != price:
            raise PermanentError(
                f"{self.name} {what}: price {price_s} is not a multiple of the tick"
            )
        return amount_s, price_s

    def _to_market(self, symbol: str, raw: Mapping[str, Any]) -> Market:
        precision = raw.get("precision") or {}
        limits = raw.get("limits") or {}
        tick = self._step(symbol, "price", precision.get("price"))
        lot = self._step(symbol, "amount", precision.get("amount"))
        maker = self._maker_fee
        if maker is None:
            fee = raw.get("maker")
            if fee is None:
                fee = (self._client.fees.get("trading") or {}).get("maker")
            if fee is None:
                raise PermanentError(f"{self.name} market {symbol}: no maker fee known")
            maker = _dec(fee)
        return Market(
            symbol=symbol,
            base=str(raw["base"]),
            quote=str(raw["quote"]),
            tick=tick,
            lot=lot,
            min_amount=_dec_or((limits.get("amount") or {}).get("min"), lot),
            min_cost=_dec_or((limits.get("cost") or {}).get("min"), Decimal(0)),
            maker_fee=maker,
        )

    def _step(self, symbol: str, which: str, value: Any) -> Decimal:
        """A price/amount increment from ccxt's precision, whatever its precisionMode."""
        if value is None:
            raise PermanentError(f"{self.name} market {symbol}: no {which} precision")
        mode = self._client.precisionMode
        if mode == TICK_SIZE:  # the value is the step itself, e.g. 0.1
            return _dec(value)
        if mode == DECIMAL_PLACES:  # the value is a number of digits, e.g. 1 -> 0.1
            return Decimal(1).scaleb(-int(value))
        raise PermanentError(f"{self.name} market {symbol}: unsupported precision mode {mode}")

    def _to_order(
        self,
        raw: Mapping[str, Any],
        *,
        client_id: str | None = None,
        symbol: str | None = None,
        side: str | None = None,
        price: Decimal | None = None,
        amount: Decimal | None = None,
    ) -> Order:
        """ccxt's unified order as ours; the keyword arguments fill what ccxt left empty."""
        raw_status = raw.get("status")
        status = (
            _STATUSES.get(str(raw_status), OrderStatus.OPEN) if raw_status else OrderStatus.OPEN
        )
        raw_price = raw.get("price")
        if raw_price is None:
            raw_price = raw.get("average")
        timestamp = raw.get("timestamp")
        return Order(
            id=str(raw["id"]),
            client_id=raw.get("clientOrderId") or client_id,
            symbol=raw.get("symbol") or symbol or "",
            side=raw.get("side") or side or "",
            price=price if price is not None else _dec_or(raw_price, Decimal(0)),
            amount=amount if amount is not None else _dec_or(raw.get("amount"), Decimal(0)),
            filled=_dec_or(raw.get("filled"), Decimal(0)),
            status=status,
            timestamp_ms=int(timestamp) if timestamp is not None else None,
        )
