"""The Exchange Protocol on top of a ccxt async client (Kraken by default).

Every exchange call goes through `_call`/`_once`: the circuit breaker (when given),
ccxt's errors translated into trading.exchange's classes (trading.ccxt_errors), and
retries of transient failures with exponential backoff and full jitter. A rate-limit
reply is not retried here and never trips the breaker: it is the pair's matter, the
caller's budget (trading.kraken_limits) waits. Money stays Decimal (trading.ccxt_convert).

Placing (trading.ccxt_placing) is not idempotent: a timeout may hide an accepted order,
so before each retry the client order id is looked up, open and closed orders alike,
and no place request is sent later than `worst_call_ms` after the call began.

`api_url` (EXCHANGE_API_URL) replaces the scheme, host and port of every REST URL of
the exchange (a local stand-in, a proxy, a regional endpoint); `sandbox`
(EXCHANGE_SANDBOX) switches ccxt to the exchange's test URLs.

API keys are only handed to ccxt; they never appear in a log line or an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import ccxt
import ccxt.async_support as ccxt_async

from trading.breaker import CircuitBreaker
from trading.ccxt_convert import dec, is_our_sell, plain, to_market, to_order
from trading.ccxt_errors import ErrorTranslator
from trading.ccxt_placing import OutOfTime, Placer
from trading.exchange import (
    BadSymbol,
    CircuitOpen,
    ExchangeError,
    Market,
    Order,
    OrderNotFound,
    PermanentError,
    Quote,
    RateLimited,
    SeenFill,
    SellRequest,
    TransientError,
)

T = TypeVar("T")

log = logging.getLogger(__name__)

# ccxt logs every request with its headers (API-Key, API-Sign) at DEBUG. Its instances get
# this logger instead, which never emits below INFO, whatever the root level is.
_WIRE_LOG = logging.getLogger(f"{__name__}.wire")
_WIRE_LOG.setLevel(logging.INFO)

BACKOFF_CAP = 10.0  # seconds, upper bound of one backoff sleep
CALL_SLACK_MS = 1_000  # for the work between requests (signing, parsing, the breaker)

Sleep = Callable[[float], Awaitable[None]]
OnRateLimited = Callable[[str], Awaitable[None]]


def has_sandbox(exchange_id: str) -> bool:
    """Whether ccxt knows test URLs for the exchange (what `set_sandbox_mode` needs)."""
    klass = getattr(ccxt_async, exchange_id, None)
    if klass is None:
        raise ValueError(f"unknown ccxt exchange id: {exchange_id!r}")
    return bool(klass({}).urls.get("test"))


def rebase_urls(api: Any, base_url: str) -> Any:
    """ccxt's `urls['api']` with every http(s) URL moved onto `base_url`'s origin.

    The path of `base_url` is put in front of each URL's own path, so
    'https://api.kraken.com' with base 'http://127.0.0.1:8080' is 'http://127.0.0.1:8080'
    and 'https://api.binance.com/api/v3' with base 'https://proxy/bn' is
    'https://proxy/bn/api/v3'. WebSocket URLs are left alone.
    """
    if isinstance(api, str):
        parts = urlsplit(api)
        if parts.scheme not in ("http", "https"):
            return api
        base = urlsplit(base_url)
        path = base.path.rstrip("/") + parts.path
        return urlunsplit((base.scheme, base.netloc, path, parts.query, parts.fragment))
    if isinstance(api, Mapping):
        return {key: rebase_urls(value, base_url) for key, value in api.items()}
    return api


class CcxtExchange:
    """An Exchange backed by `ccxt.async_support.<exchange_id>` (see module docstring)."""

    def __init__(
        self,
        *,
        exchange_id: str = "kraken",
        api_key: str | None = None,
        api_secret: str | None = None,
        maker_fee: Decimal | None = None,
        api_url: str | None = None,
        sandbox: bool = False,
        breaker: CircuitBreaker | None = None,
        max_tries: int = 3,
        backoff_base: float = 0.2,
        sleep: Sleep = asyncio.sleep,
        timeout_ms: int = 10_000,
        ccxt_config: Mapping[str, Any] | None = None,
        on_rate_limited: OnRateLimited | None = None,
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
        if sandbox:
            if not self._client.urls.get("test"):
                raise ValueError(f"ccxt has no sandbox (test URLs) for {exchange_id}")
            self._client.set_sandbox_mode(True)
        if api_url:
            self._client.urls = {
                **self._client.urls,
                "api": rebase_urls(self._client.urls["api"], api_url),
            }
        self._skip_throttle_for_uncounted_calls()
        self.name: str = exchange_id
        secrets = tuple(s for s in (api_key, api_secret) if s and len(s) >= 4)
        self._errors = ErrorTranslator(exchange_id, self._client.exceptions or {}, secrets)
        self._maker_fee = maker_fee
        self._breaker = breaker
        self._max_tries = max_tries
        self._backoff_base = backoff_base
        self._timeout_ms = timeout_ms
        self._sleep = sleep
        self._on_rate_limited = on_rate_limited
        self._rng = random.Random()
        self._markets_lock = asyncio.Lock()
        self._markets_loaded = False
        self._markets: dict[str, Market] = {}
        self._placer = Placer(self)

    def _skip_throttle_for_uncounted_calls(self) -> None:
        """ccxt paces every call through one queue, so a call its table says costs nothing
        (Kraken's AddOrder, AddOrderBatch, CancelOrder: they count on the trading counter,
        which the rate budget manages, not on the API counter) waits behind the cost of
        earlier queries — 3 s after one private query at Kraken's defaults. Such calls go
        straight out; every other call keeps ccxt's pacing."""
        paced = self._client.throttle

        async def throttle(cost: Any = None) -> None:
            if cost == 0:
                return
            await paced(cost)

        self._client.throttle = throttle

    # -- limits of one call ----------------------------------------------------------------

    @property
    def max_tries(self) -> int:
        return self._max_tries

    @property
    def worst_call_ms(self) -> int:
        """The longest a place call can last: after it, none of its requests is sent.

        tries × timeout (the place requests) + (tries − 1) × 2 × timeout (an open and a
        closed look-up of the client id before each retry) + the longest backoff sleeps
        + CALL_SLACK_MS. Each place request is cut at this deadline, and none starts after it; so a
        pending step older than this (TP_PENDING_SETTLE_MS) is never still being sent.
        """
        n, timeout = self._max_tries, self._timeout_ms
        backoff_s = sum(self.backoff_cap(attempt) for attempt in range(1, n))
        backoff_ms = math.ceil(round(backoff_s * 1000, 3))
        return n * timeout + 2 * timeout * (n - 1) + backoff_ms + CALL_SLACK_MS

    def backoff_cap(self, attempt: int) -> float:
        """The upper bound (s) of the sleep after failed try `attempt`."""
        return float(min(BACKOFF_CAP, self._backoff_base * 2 ** (attempt - 1)))

    async def backoff(self, attempt: int, what: str, error: Exception) -> None:
        log.warning(
            "transient exchange error, retrying",
            extra={"exchange": self.name, "call": what, "attempt": attempt, "error": str(error)},
        )
        await self._sleep(self._rng.uniform(0.0, self.backoff_cap(attempt)))

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
        parsed = to_market(
            name=self.name,
            symbol=symbol,
            raw=raw,
            precision_mode=self._client.precisionMode,
            maker_fee=self._maker_fee,
            default_maker=(self._client.fees.get("trading") or {}).get("maker"),
        )
        self._markets[symbol] = parsed
        return parsed

    async def place_limit_sells(
        self, requests: Sequence[SellRequest]
    ) -> list[Order | ExchangeError]:
        """Grouped by pair; 2-15 orders of a pair go out in one batch (AddOrderBatch)."""
        return await self._placer.place_many(requests)

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
        request = SellRequest(
            symbol=symbol, amount=amount, price=price, client_id=client_id, post_only=post_only
        )
        (outcome,) = await self._placer.place_many([request])
        if isinstance(outcome, ExchangeError):
            raise outcome
        return outcome

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
                symbol=symbol,
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
        return to_order(raw)

    async def fetch_order_by_client_id(self, *, symbol: str, client_id: str) -> Order | None:
        """The sell of `symbol` placed with `client_id`: open orders first, then closed ones."""
        await self.market(symbol)
        return await self._call(
            f"fetch_order_by_client_id {symbol} {client_id}",
            lambda: self.find_by_client_id(symbol, client_id),
        )

    async def open_orders(self, symbol: str | None = None) -> list[Order]:
        if symbol is not None:
            await self.market(symbol)
        else:
            await self._ensure_markets()
        raws = await self._call(
            f"open_orders {symbol or '*'}", lambda: self._client.fetch_open_orders(symbol)
        )
        return [to_order(raw) for raw in raws]

    async def free_balance(self, asset: str) -> Decimal:
        await self._ensure_markets()
        balance = await self._call(f"free_balance {asset}", lambda: self._client.fetch_balance())
        free = (balance.get("free") or {}).get(asset)
        return Decimal(0) if free is None else dec(free)

    async def quote(self, symbol: str) -> Quote:
        await self.market(symbol)
        what = f"quote {symbol}"
        ticker = await self._call(what, lambda: self._client.fetch_ticker(symbol))
        bid, ask, last = ticker.get("bid"), ticker.get("ask"), ticker.get("last")
        if bid is None or ask is None:
            raise PermanentError(f"{self.name} {what}: the ticker has no bid/ask")
        return Quote(bid=dec(bid), ask=dec(ask), last=None if last is None else dec(last))

    async def observe_fills(self, fills: Sequence[SeenFill]) -> None:
        """A real exchange knows its fills: nothing to do."""

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
        lookup: bool = False,
        symbol: str | None = None,
    ) -> T:
        """Run `fn` with retries of transient failures, at most `max_tries` tries in total."""
        last: TransientError | None = None
        for attempt in range(1, self._max_tries + 1):
            try:
                return await self.once(what, fn, lookup=lookup, symbol=symbol)
            except (CircuitOpen, RateLimited):
                raise
            except TransientError as exc:
                last = exc
                if attempt < self._max_tries:
                    await self.backoff(attempt, what, exc)
        raise self.gave_up(last)

    def gave_up(self, last: Exception | None) -> TransientError:
        tries = "1 try" if self._max_tries == 1 else f"{self._max_tries} tries"
        return TransientError(f"{last} (gave up after {tries})")

    async def once(
        self,
        what: str,
        fn: Callable[[], Awaitable[T]],
        *,
        lookup: bool = False,
        symbol: str | None = None,
        deadline: float | None = None,
    ) -> T:
        """One try of `fn` through the breaker, with ccxt's errors translated.

        With a `deadline` (time.monotonic()), the try does not start after it and is cut
        at it (OutOfTime, a TransientError: the outcome is unknown).
        """
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise OutOfTime(f"{self.name} {what}: no time left in the call (outcome unknown)")

        async def translated() -> T:
            try:
                # ccxt's decimal_to_precision sets ROUND_HALF_UP on the current decimal
                # context: keep that change inside this call.
                with decimal.localcontext():
                    if left is None:
                        return await fn()
                    try:
                        async with asyncio.timeout(left):
                            return await fn()
                    except TimeoutError:
                        raise OutOfTime(
                            f"{self.name} {what}: cut at the call's deadline (outcome unknown)"
                        ) from None
            except ccxt.BaseError as exc:
                raise self._errors.translate(what, exc, lookup=lookup, symbol=symbol) from None

        try:
            if self._breaker is None:
                return await translated()
            return await self._breaker.call(translated)
        except CircuitOpen as exc:
            raise CircuitOpen(self._errors.scrub(f"{self.name} {what}: {exc}")) from None
        except RateLimited as exc:
            await self.rate_limited(exc)
            raise

    async def rate_limited(self, exc: RateLimited) -> None:
        """Tell the budget (on_rate_limited) that the exchange refused for the rate."""
        if exc.symbol is None or self._on_rate_limited is None:
            return
        try:
            await self._on_rate_limited(exc.symbol)
        except Exception:
            log.exception("on_rate_limited failed", extra={"exchange": self.name})

    # -- helpers -------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        return self._client

    @property
    def errors(self) -> ErrorTranslator:
        return self._errors

    async def _ensure_markets(self) -> None:
        """Load ccxt's markets once, on first use; concurrent first calls wait for it."""
        if self._markets_loaded:
            return
        async with self._markets_lock:
            if self._markets_loaded:
                return
            await self._call("load_markets", lambda: self._client.load_markets())
            self._markets_loaded = True

    async def find_by_client_id(
        self, symbol: str, client_id: str, *, closed: bool = True
    ) -> Order | None:
        """Our sell of `symbol` with `client_id`: Kraken filters OpenOrders/ClosedOrders by
        cl_ord_id (ccxt: params.clientOrderId); what comes back is checked all the same."""
        fetches = [self._client.fetch_open_orders]
        if closed:
            fetches.append(self._client.fetch_closed_orders)
        for fetch in fetches:
            raws = await fetch(symbol, None, None, {"clientOrderId": client_id})
            mine = [r for r in raws if is_our_sell(r, symbol=symbol, client_id=client_id)]
            if mine:
                newest = max(mine, key=lambda r: r.get("timestamp") or 0)
                return to_order(newest, client_id=client_id)
        return None

    def wire_values(
        self, what: str, symbol: str, amount: Decimal, price: Decimal
    ) -> tuple[str, str]:
        """(amount, price) as exact strings; refuse values ccxt would round on the way out.

        The caller rounds to the market's steps. ccxt formats again (truncating amounts,
        rounding prices); if that would change a value, the order is not the one meant.
        """
        if amount <= 0 or price <= 0:
            raise PermanentError(f"{self.name} {what}: amount and price must be positive")
        amount_s, price_s = plain(amount), plain(price)
        try:
            with decimal.localcontext():
                sent_amount = self._client.amount_to_precision(symbol, amount_s)
                sent_price = self._client.price_to_precision(symbol, price_s)
        except ccxt.BaseError as exc:
            raise self._errors.translate(what, exc) from None
        if Decimal(sent_amount) != amount:
            raise PermanentError(
                f"{self.name} {what}: amount {amount_s} is not a multiple of the lot"
            )
        if Decimal(sent_price) != price:
            raise PermanentError(
                f"{self.name} {what}: price {price_s} is not a multiple of the tick"
            )
        return amount_s, price_s
