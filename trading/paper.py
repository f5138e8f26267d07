"""The paper exchange: a simulated spot exchange whose whole state lives in Redis.

Every worker process builds its own PaperExchange on the shared Redis, so they all see
the same orders, balances and prices. Each operation that reads and then writes is one
Lua script (EVALSHA), so two processes can never oversell a balance or open two orders
with one client id.

Redis layout (every key is ``keys.paper(name)``):

=================  ======  ============================================================
name               type    contents
=================  ======  ============================================================
``orders``         hash    order id -> JSON order (below); every order ever placed
``open_clients``   hash    client id -> order id, OPEN orders only (uniqueness + index)
``clients``        hash    client id -> most recent order id placed with it
``free``           hash    asset -> free balance, integer units of 1e-8
``locked``         hash    asset -> amount locked by open sells, integer units of 1e-8
``prices``         hash    symbol -> "LAST BID ASK" (decimal strings)
``bids``           hash    symbol -> best bid, integer units of 1e-18 (post-only check)
``ticks``          hash    symbol -> tick of an unlisted symbol (first price wins)
``seen_fills``     set     fill ids already applied by observe_fill
``seq``            string  counter ordering the orders
``init``           string  set once the starting balances were applied
=================  ======  ============================================================

JSON order fields (all strings but ``seq``): ``id``, ``cid`` (client id), ``sym``,
``side``, ``base``, ``quote``, ``px`` and ``amt`` (the price and amount exactly as
given), ``fil`` and ``rem`` (filled and remaining, units of 1e-8), ``st`` (an
OrderStatus value), ``ts`` (epoch ms), ``seq``.

Money is exact: balances are integers of 1e-8 (8 decimals, Kraken's lot precision),
changed only with HINCRBY (64-bit, so at most ~92 billion of one asset); scripts compare
them as digit strings, never as Lua floats. Where a value must be rounded the direction
favours the exchange: credits round DOWN, debits and fees round UP.

Simulation rules: a buy fill credits the base asset; a sell fill debits it unless it is
a fill of one of our own orders (fill_order already moved those balances). Quote
balances only move through fill_order (price x quantity less the maker fee). There is
no matching engine: orders rest until fill_order or cancel_order; post-only sells at or
below the best bid are rejected, others are accepted whatever their price.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_UP, Decimal, localcontext
from typing import Any

import msgspec
import orjson
import redis.asyncio as aioredis

from storage.keys import Keys
from storage.pipeliner import Pipeliner
from storage.redis import as_text
from trading.exchange import (
    BadSymbol,
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

UNIT_EXP = 8  # balances and order amounts are integers of 1e-8
PRICE_EXP = 18  # prices compared inside Lua are integers of 1e-18
MAX_UNITS = 10**18  # 1e10 of an asset: far below HINCRBY's 64-bit limit
GENERIC_LOT = Decimal("0.00000001")
GENERIC_MIN_COST = Decimal("0.5")
GENERIC_FALLBACK_TICK = Decimal("0.00000001")  # an unlisted symbol before any price
GENERIC_SIGNIFICANT_DIGITS = 5
MIN_TICK = Decimal(1).scaleb(-PRICE_EXP)

_SYMBOL = re.compile(r"([A-Za-z0-9.]{1,24})/([A-Za-z0-9.]{1,24})")  # as events/codec.py


@dataclass(frozen=True, slots=True)
class PairRules:
    tick: Decimal
    min_amount: Decimal
    min_cost: Decimal = Decimal("0.5")
    lot: Decimal = Decimal("0.00000001")  # Kraken lot_decimals = 8


# Kraken spot USD pairs (AssetPairs: tick_size, ordermin, costmin, lot_decimals=8).
# BTC, ETH, SOL and DOGE were read from AssetPairs answers recorded in 2026; the other
# ordermins from a 2026 AssetPairs-derived table and the other ticks from Kraken's
# pair_decimals. Kraken revises ordermin from time to time: treat them as a snapshot.
KRAKEN_USD_PAIRS: Mapping[str, PairRules] = {
    "BTC/USD": PairRules(tick=Decimal("0.1"), min_amount=Decimal("0.00005")),
    "ETH/USD": PairRules(tick=Decimal("0.01"), min_amount=Decimal("0.002")),
    "SOL/USD": PairRules(tick=Decimal("0.01"), min_amount=Decimal("0.06")),
    "XRP/USD": PairRules(tick=Decimal("0.00001"), min_amount=Decimal("1.65")),
    "ADA/USD": PairRules(tick=Decimal("0.000001"), min_amount=Decimal("20")),
    "DOGE/USD": PairRules(tick=Decimal("0.0000001"), min_amount=Decimal("50")),
    "DOT/USD": PairRules(tick=Decimal("0.0001"), min_amount=Decimal("3.9")),
    "LINK/USD": PairRules(tick=Decimal("0.00001"), min_amount=Decimal("0.55")),
    "LTC/USD": PairRules(tick=Decimal("0.01"), min_amount=Decimal("0.1")),
    "AVAX/USD": PairRules(tick=Decimal("0.01"), min_amount=Decimal("0.5")),  # tick approximate
}

# --- Lua ---------------------------------------------------------------------------
# ge(a, b): a >= b for canonical signed integer strings of any length (no floats).
_LUA_GE = """
local function ge(a, b)
  local na, nb = string.sub(a, 1, 1) == '-', string.sub(b, 1, 1) == '-'
  if na ~= nb then return nb end
  if na then a, b = string.sub(b, 2), string.sub(a, 2) end
  if #a ~= #b then return #a > #b end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return true
end
"""

# KEYS: orders open_clients clients free locked bids seq
# ARGV: id cid symbol base quote amount units price price_e18 post_only ts
PLACE_LUA = (
    _LUA_GE
    + """
local open_id = redis.call('HGET', KEYS[2], ARGV[2])
if open_id then return {'dup', open_id} end
if ARGV[10] == '1' then
  local bid = redis.call('HGET', KEYS[6], ARGV[3])
  if bid and ge(bid, ARGV[9]) then return {'post_only', bid} end
end
local free = redis.call('HGET', KEYS[4], ARGV[4]) or '0'
if not ge(free, ARGV[7]) then return {'funds', free} end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {'collision', ''} end
redis.call('HINCRBY', KEYS[5], ARGV[4], ARGV[7])
redis.call('HINCRBY', KEYS[4], ARGV[4], '-' .. ARGV[7])
local order = cjson.encode({id = ARGV[1], cid = ARGV[2], sym = ARGV[3], side = 'sell',
  base = ARGV[4], quote = ARGV[5], px = ARGV[8], amt = ARGV[6], fil = '0', rem = ARGV[7],
  st = 'open', ts = ARGV[11], seq = redis.call('INCR', KEYS[7])})
redis.call('HSET', KEYS[1], ARGV[1], order)
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[1])
return {'ok', order}
"""
)

# KEYS: orders open_clients free locked   ARGV: id
CANCEL_LUA = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {'missing', ''} end
local o = cjson.decode(raw)
if o.st ~= 'open' then return {'final', raw} end
if o.rem ~= '0' then
  redis.call('HINCRBY', KEYS[4], o.base, '-' .. o.rem)
  redis.call('HINCRBY', KEYS[3], o.base, o.rem)
end
o.st = 'canceled'
raw = cjson.encode(o)
redis.call('HSET', KEYS[1], ARGV[1], raw)
if redis.call('HGET', KEYS[2], o.cid) == ARGV[1] then redis.call('HDEL', KEYS[2], o.cid) end
return {'ok', raw}
"""

# Compare-and-set fill computed in Python (prices x quantities need decimals).
# KEYS: orders open_clients free locked   ARGV: id expected_fil fil rem qty net status
FILL_LUA = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {'missing', ''} end
local o = cjson.decode(raw)
if o.st ~= 'open' or o.fil ~= ARGV[2] then return {'stale', raw} end
redis.call('HINCRBY', KEYS[3], o.quote, ARGV[6])
redis.call('HINCRBY', KEYS[4], o.base, '-' .. ARGV[5])
o.fil, o.rem, o.st = ARGV[3], ARGV[4], ARGV[7]
raw = cjson.encode(o)
redis.call('HSET', KEYS[1], ARGV[1], raw)
if o.st ~= 'open' and redis.call('HGET', KEYS[2], o.cid) == ARGV[1] then
  redis.call('HDEL', KEYS[2], o.cid)
end
return {'ok', raw}
"""

# Shared tail: store the price and, for an unlisted symbol, its tick (first one wins).
_LUA_SET_PRICE = """
local function set_price(prices, bids, ticks, symbol, triple, bid, tick)
  redis.call('HSET', prices, symbol, triple)
  redis.call('HSET', bids, symbol, bid)
  if tick == '' then return '' end
  redis.call('HSETNX', ticks, symbol, tick)
  return redis.call('HGET', ticks, symbol)
end
"""

# KEYS: seen free orders prices bids ticks
# ARGV: fill_id order_id side base units symbol "LAST BID ASK" bid_e18 generic_tick
OBSERVE_LUA = (
    _LUA_SET_PRICE
    + """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return {0, ''} end
if ARGV[5] ~= '0' then
  if ARGV[3] == 'buy' then
    redis.call('HINCRBY', KEYS[2], ARGV[4], ARGV[5])
  elseif redis.call('HEXISTS', KEYS[3], ARGV[2]) == 0 then
    redis.call('HINCRBY', KEYS[2], ARGV[4], '-' .. ARGV[5])
  end
end
redis.call('SADD', KEYS[1], ARGV[1])
return {1, set_price(KEYS[4], KEYS[5], KEYS[6], ARGV[6], ARGV[7], ARGV[8], ARGV[9])}
"""
)

# KEYS: prices bids ticks   ARGV: symbol "LAST BID ASK" bid_e18 generic_tick
SET_PRICE_LUA = (
    _LUA_SET_PRICE
    + """
return set_price(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
)

# KEYS: init free   ARGV: asset units [asset units ...]
INIT_LUA = """
if not redis.call('SET', KEYS[1], '1', 'NX') then return 0 end
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: clients orders   ARGV: client id
BY_CLIENT_LUA = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
return redis.call('HGET', KEYS[2], id)
"""

# KEYS: open_clients orders  (HMGET in chunks: unpack() is limited to ~8000 values)
OPEN_LUA = """
local ids = redis.call('HVALS', KEYS[1])
local out = {}
for i = 1, #ids, 500 do
  local part = redis.call('HMGET', KEYS[2], unpack(ids, i, math.min(i + 499, #ids)))
  for _, raw in ipairs(part) do if raw then out[#out + 1] = raw end end
end
return out
"""


# --- helpers -----------------------------------------------------------------------
def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def split_symbol(symbol: str) -> tuple[str, str]:
    """(base, quote) of a BASE/QUOTE symbol; BadSymbol otherwise."""
    match = _SYMBOL.fullmatch(symbol) if isinstance(symbol, str) else None
    if match is None or match.group(1) == match.group(2):
        raise BadSymbol(f"not a BASE/QUOTE symbol: {str(symbol)[:60]!r}")
    return match.group(1), match.group(2)


def generic_tick(price: Decimal) -> Decimal:
    """Tick of an unlisted symbol: 5 significant digits at this price (>= 1e-18)."""
    return max(Decimal(1).scaleb(price.adjusted() - GENERIC_SIGNIFICANT_DIGITS + 1), MIN_TICK)


def round_to_step(value: Decimal, step: Decimal, rounding: str) -> Decimal:
    """value rounded to a multiple of step (any step, not only powers of ten)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return (value / step).to_integral_value(rounding=rounding) * step


def to_units(value: Decimal, rounding: str, exp: int = UNIT_EXP) -> int:
    """value as an integer count of 10**-exp, rounded as asked."""
    with localcontext() as ctx:
        ctx.prec = 60
        return int(value.scaleb(exp).to_integral_value(rounding=rounding))


def from_units(units: int | bytes | str) -> Decimal:
    return Decimal(int(units)).scaleb(-UNIT_EXP)


def _positive(name: str, value: Decimal) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
        raise PermanentError(f"{name} must be a positive decimal, got {value!r}")
    return value


def _exact_units(name: str, value: Decimal) -> int:
    units = to_units(value, ROUND_DOWN)
    if from_units(units) != value:
        raise PermanentError(f"{name} {value} is not a multiple of 1e-8")
    return _bounded(name, units)


def _bounded(name: str, units: int) -> int:
    if units > MAX_UNITS:
        raise PermanentError(f"{name} is too large for the paper exchange")
    return units


def _new_order_id() -> str:
    """Kraken-style OXXXXX-XXXXX-XXXXXX from 80 random bits."""
    raw = base64.b32encode(secrets.token_bytes(10)).decode()
    return f"O{raw[:5]}-{raw[5:10]}-{raw[10:16]}"


def _order(raw: bytes | str) -> Order:
    return _order_from(orjson.loads(raw))


_STATUS = {status.value: status for status in OrderStatus}  # a dict lookup is 10x the enum call


def _order_from(o: dict[str, Any]) -> Order:
    return Order(
        id=o["id"],
        client_id=o["cid"],
        symbol=o["sym"],
        side=o["side"],
        price=Decimal(o["px"]),
        amount=Decimal(o["amt"]),
        filled=from_units(o["fil"]),
        status=_STATUS[o["st"]],
        timestamp_ms=int(o["ts"]),
    )


class _Stored(msgspec.Struct):
    """The fields of a stored order that an Order needs (decoded without a dict per order)."""

    id: str
    cid: str
    sym: str
    side: str
    px: str
    amt: str
    fil: str | int
    st: str
    ts: str | int
    seq: int | float = 0


_stored = msgspec.json.Decoder(_Stored)


def _sorted_orders(raws: Iterable[bytes | str | None]) -> list[Order]:
    """Orders in placement order; a sweep reads 100k of them, so this path is kept lean."""
    decoded = [_stored.decode(raw) for raw in raws if raw is not None]
    decoded.sort(key=lambda o: o.seq)
    status = _STATUS
    return [
        Order(
            id=o.id,
            client_id=o.cid,
            symbol=o.sym,
            side=o.side,
            price=Decimal(o.px),
            amount=Decimal(o.amt),
            filled=from_units(o.fil),
            status=status[o.st],
            timestamp_ms=int(o.ts),
        )
        for o in decoded
    ]


class PaperExchange:
    """Simulated exchange implementing trading.exchange.Exchange, shared through Redis."""

    name = "paper"

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        keys: Keys,
        maker_fee: Decimal = Decimal("0.0025"),
        starting_balances: Mapping[str, Decimal] | None = None,
        half_spread: Decimal = Decimal("0.0001"),
        clock_ms: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        if not (0 <= maker_fee < 1) or not (0 <= half_spread < 1):
            raise ValueError("maker_fee and half_spread must be in [0, 1)")
        self._redis = redis
        self._maker_fee = maker_fee
        self._half_spread = half_spread
        self._clock_ms = clock_ms
        self._k = {
            n: keys.paper(n)
            for n in (
                "orders",
                "open_clients",
                "clients",
                "free",
                "locked",
                "prices",
                "bids",
                "ticks",
                "seen_fills",
                "seq",
                "init",
            )
        }
        self._starting: list[str] = []
        for asset, amount in (starting_balances or {}).items():
            if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
                raise ValueError(f"starting balance of {asset} must be a decimal >= 0")
            self._starting += [asset, str(_bounded(asset, to_units(amount, ROUND_DOWN)))]
        self._initialized = not self._starting
        self._init_lock = asyncio.Lock()
        self._markets: dict[str, Market] = {}
        self._ticks: dict[str, Decimal] = {}  # ticks of unlisted symbols, once known
        self._pipeliner = Pipeliner(redis)  # hot calls share round trips
        register = redis.register_script
        self._place = register(PLACE_LUA)
        self._cancel = register(CANCEL_LUA)
        self._fill = register(FILL_LUA)
        self._observe = register(OBSERVE_LUA)
        self._set_price = register(SET_PRICE_LUA)
        self._init = register(INIT_LUA)
        self._by_client = register(BY_CLIENT_LUA)
        self._open = register(OPEN_LUA)

    # --- setup ---------------------------------------------------------------------
    async def _ensure_init(self) -> None:
        """Apply the starting balances once per key prefix (SET NX in the same script)."""
        if self._initialized:
            return
        async with self._init_lock:
            if not self._initialized:
                keys = [self._k["init"], self._k["free"]]
                await self._init(keys=keys, args=self._starting)
                self._initialized = True

    # --- markets and prices --------------------------------------------------------
    async def market(self, symbol: str) -> Market:
        """Kraken's rules for listed pairs; for others lot 1e-8, no ordermin, costmin 0.5
        and a tick of 5 significant digits at the first price seen (shared via Redis)."""
        cached = self._markets.get(symbol)
        if cached is not None:
            return cached
        base, quote = split_symbol(symbol)
        rules = KRAKEN_USD_PAIRS.get(symbol)
        cacheable = True
        if rules is None:
            known = await self._known_tick(symbol)
            cacheable = known is not None  # before any price the fallback tick is provisional
            rules = PairRules(
                tick=known or GENERIC_FALLBACK_TICK,
                min_amount=Decimal(0),
                min_cost=GENERIC_MIN_COST,
                lot=GENERIC_LOT,
            )
        market = Market(
            symbol=symbol,
            base=base,
            quote=quote,
            tick=rules.tick,
            lot=rules.lot,
            min_amount=rules.min_amount,
            min_cost=rules.min_cost,
            maker_fee=self._maker_fee,
        )
        if cacheable:
            self._markets[symbol] = market
        return market

    async def _known_tick(self, symbol: str) -> Decimal | None:
        tick = self._ticks.get(symbol)
        if tick is None:
            raw = await self._redis.hget(self._k["ticks"], symbol)
            if raw is not None:
                tick = self._ticks[symbol] = Decimal(as_text(raw))
        return tick

    async def _price_args(self, symbol: str, price: Decimal) -> tuple[str, str, str]:
        """("LAST BID ASK", bid in 1e-18 units, tick to record or "") for a new last price."""
        rules = KRAKEN_USD_PAIRS.get(symbol)
        record = ""
        if rules is not None:
            tick = rules.tick
        else:
            known = await self._known_tick(symbol)  # a round trip only the first time
            tick = known if known is not None else generic_tick(price)
            record = "" if known is not None else str(tick)
        with localcontext() as ctx:
            ctx.prec = 60
            bid = round_to_step(price * (1 - self._half_spread), tick, ROUND_DOWN)
            ask = round_to_step(price * (1 + self._half_spread), tick, ROUND_UP)
            if bid >= ask:
                ask = bid + tick
        bid_units = to_units(bid, ROUND_DOWN, PRICE_EXP)
        return f"{price} {bid} {ask}", str(bid_units), record

    def _remember_tick(self, symbol: str, stored: Any) -> None:
        if stored:
            self._ticks[symbol] = Decimal(as_text(stored))
            self._markets.pop(symbol, None)

    async def set_price(self, symbol: str, price: Decimal) -> None:
        """Move the last price of a symbol (simulator hook)."""
        split_symbol(symbol)
        _positive("price", price)
        triple, bid, tick = await self._price_args(symbol, price)
        keys = [self._k["prices"], self._k["bids"], self._k["ticks"]]
        stored = await self._set_price(keys=keys, args=[symbol, triple, bid, tick])
        self._remember_tick(symbol, stored)

    async def quote(self, symbol: str) -> Quote:
        """Bid/ask around the last price: last x (1 -/+ half_spread), rounded out to the tick."""
        split_symbol(symbol)
        raw = await self._redis.hget(self._k["prices"], symbol)
        if raw is None:
            raise TransientError(f"no price yet for {symbol}")
        _, bid, ask = as_text(raw).split(" ")
        return Quote(bid=Decimal(bid), ask=Decimal(ask))

    # --- fills ---------------------------------------------------------------------
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
        """Apply a trader fill once per fill_id: move the base balance and the last price."""
        base, _ = split_symbol(symbol)
        if side not in ("buy", "sell"):
            raise PermanentError(f"side must be 'buy' or 'sell', got {side[:20]!r}")
        _positive("price", price)
        if not isinstance(quantity, Decimal) or not quantity.is_finite() or quantity < 0:
            raise PermanentError(f"quantity must be a decimal >= 0, got {quantity!r}")
        # credits round down, debits round up: never more than the trader really has
        units = _bounded("quantity", to_units(quantity, ROUND_DOWN if side == "buy" else ROUND_UP))
        await self._ensure_init()
        triple, bid, tick = await self._price_args(symbol, price)
        k = self._k
        keys = [k["seen_fills"], k["free"], k["orders"], k["prices"], k["bids"], k["ticks"]]
        args = [fill_id, order_id, side, base, str(units), symbol, triple, bid, tick]
        _, stored = await self._pipeliner.run(self._observe, keys, args)
        self._remember_tick(symbol, stored)

    async def fill_order(self, order_id: str, quantity: Decimal | None = None) -> Order:
        """Fill all (None) or part of an open order at its limit price (simulator hook).

        Never fills more than the remainder; an order that is not open is returned as is.
        The quote credit is price x qty rounded down to 1e-8, less the maker fee rounded up.
        """
        if quantity is not None:
            _positive("quantity", quantity)
        await self._ensure_init()
        k = self._k
        while True:
            raw = await self._redis.hget(k["orders"], order_id)
            if raw is None:
                raise OrderNotFound(f"no paper order {order_id[:40]!r}")
            o = orjson.loads(raw)
            if o["st"] != OrderStatus.OPEN:
                return _order(raw)
            remaining = int(o["rem"])
            qty = remaining if quantity is None else min(to_units(quantity, ROUND_DOWN), remaining)
            if qty <= 0:
                return _order(raw)
            with localcontext() as ctx:
                ctx.prec = 60
                gross = Decimal(o["px"]) * from_units(qty)
                fee = to_units(gross * self._maker_fee, ROUND_UP)
                net = to_units(gross, ROUND_DOWN) - fee
            filled = int(o["fil"]) + qty
            status = OrderStatus.CLOSED if qty == remaining else OrderStatus.OPEN
            keys = [k["orders"], k["open_clients"], k["free"], k["locked"]]
            args = [order_id, o["fil"], filled, remaining - qty, qty, net, status.value]
            outcome, raw = await self._fill(keys=keys, args=args)
            if outcome == b"ok":
                return _order(raw)
            if outcome == b"missing":
                raise OrderNotFound(f"no paper order {order_id[:40]!r}")
            # stale: another process filled or canceled it meanwhile; look again

    # --- orders --------------------------------------------------------------------
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
        """Check the client id, the post-only rule and the free balance, then lock it: one script."""
        base, quote = split_symbol(symbol)
        units = _exact_units("amount", _positive("amount", amount))
        _positive("price", price)
        price_units = to_units(price, ROUND_UP, PRICE_EXP)
        await self._ensure_init()
        k = self._k
        keys = [
            k["orders"],
            k["open_clients"],
            k["clients"],
            k["free"],
            k["locked"],
            k["bids"],
            k["seq"],
        ]
        ts = str(self._clock_ms())
        while True:
            order_id = _new_order_id()
            args = [
                order_id,
                client_id,
                symbol,
                base,
                quote,
                str(amount),
                str(units),
                str(price),
                str(price_units),
                "1" if post_only else "0",
                ts,
            ]
            outcome, detail = await self._pipeliner.run(self._place, keys, args)
            if outcome == b"ok":
                return _order(detail)
            if outcome == b"dup":
                raise DuplicateClientId(f"client id {client_id!r} is open as {as_text(detail)}")
            if outcome == b"post_only":
                bid = Decimal(int(detail)).scaleb(-PRICE_EXP).normalize()
                raise PostOnlyRejected(f"post-only sell at {price} would cross the bid {bid}")
            if outcome == b"funds":
                raise InsufficientFunds(
                    f"free {base} {from_units(int(detail))} < {amount} ({symbol})"
                )
            # collision of 80 random bits: draw another id

    async def cancel_order(self, *, symbol: str, order_id: str) -> Order:
        """Cancel and unlock the remainder; an order already closed is returned unchanged."""
        await self._ensure_init()
        k = self._k
        keys = [k["orders"], k["open_clients"], k["free"], k["locked"]]
        outcome, raw = await self._cancel(keys=keys, args=[order_id])
        if outcome == b"missing":
            raise OrderNotFound(f"no paper order {order_id[:40]!r}")
        return _order(raw)

    async def fetch_order(self, *, symbol: str, order_id: str) -> Order | None:
        raw = await self._redis.hget(self._k["orders"], order_id)
        return None if raw is None else _order(raw)

    async def fetch_order_by_client_id(self, *, symbol: str, client_id: str) -> Order | None:
        """The most recent order placed with this client id (ids are account-wide, as on Kraken)."""
        raw = await self._by_client(keys=[self._k["clients"], self._k["orders"]], args=[client_id])
        return None if raw is None else _order(raw)

    async def open_orders(self, symbol: str | None = None) -> list[Order]:
        raws = await self._open(keys=[self._k["open_clients"], self._k["orders"]])
        return [o for o in _sorted_orders(raws) if symbol is None or o.symbol == symbol]

    async def orders(self, symbol: str | None = None) -> list[Order]:
        """Every order ever placed, oldest first (simulator hook, for tests and reports)."""
        raws = await self._redis.hvals(self._k["orders"])
        return [o for o in _sorted_orders(raws) if symbol is None or o.symbol == symbol]

    # --- balances ------------------------------------------------------------------
    async def free_balance(self, asset: str) -> Decimal:
        await self._ensure_init()
        raw = await self._redis.hget(self._k["free"], asset)
        return from_units(0 if raw is None else raw)

    async def balances(self) -> dict[str, Decimal]:
        """Total (free + locked) of every asset the exchange has seen (simulator hook)."""
        await self._ensure_init()
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self._k["free"])
            pipe.hgetall(self._k["locked"])
            free, locked = await pipe.execute()
        totals: dict[str, int] = {}
        for table in (free, locked):
            for asset, units in table.items():
                totals[as_text(asset)] = totals.get(as_text(asset), 0) + int(units)
        return {asset: from_units(units) for asset, units in sorted(totals.items())}

    async def close(self) -> None:
        """Nothing to release: the Redis client is shared and closed by its owner."""
