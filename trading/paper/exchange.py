"""PaperExchange: the simulated spot exchange, its whole state in Redis (trading.paper)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_DOWN, ROUND_UP, Decimal, localcontext
from typing import Any

import orjson
from redis.commands.core import AsyncScript

from storage.keys import Keys
from storage.pipeliner import Pipeliner
from storage.redis import AnyRedis, as_text
from trading.exchange import (
    ExchangeError,
    Market,
    Order,
    OrderChanges,
    OrderNotFound,
    OrderStatus,
    PermanentError,
    Quote,
    SeenFill,
    SellRequest,
    TransientError,
)
from trading.paper.faults import PaperFaults, fault_error
from trading.paper.rules import KRAKEN_USD_PAIRS, generic_rules, generic_tick, split_symbol
from trading.paper.scripts import (
    BY_CLIENT_LUA,
    CANCEL_LUA,
    CHANGES_LUA,
    FILL_LUA,
    FORGET_LUA,
    INIT_LUA,
    OBSERVE_LUA,
    OBSERVE_MANY_LUA,
    OPEN_LUA,
    PLACE_LUA,
    SET_PRICE_LUA,
)
from trading.paper.stored import decode_order, new_order_id, place_args, placed, sorted_orders
from trading.paper.units import (
    PRICE_EXP,
    bounded,
    from_units,
    positive,
    round_to_step,
    to_units,
)

# every key of the paper account, by name (keys.paper(name); layout in trading/paper)
KEY_NAMES = (
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
    "faults",
    "changes",
    "change_seq",
    "changes_floor",
)
_CHANGE_KEYS = ("changes", "change_seq", "changes_floor")
_PLACE_KEYS = ("orders", "open_clients", "clients", "free", "locked", "bids", "seq", *_CHANGE_KEYS)
_FINAL_KEYS = ("orders", "open_clients", "free", "locked", *_CHANGE_KEYS)  # cancel, fill
FORGET_CHUNK = 2000  # orders (and fills) per forget script call
_REFUSED_BEFORE_PLACING = frozenset({"rate_limit", "place_5xx", "place_timeout"})


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class PaperExchange:
    """Simulated exchange implementing trading.exchange.Exchange, shared through Redis."""

    name = "paper"

    def __init__(
        self,
        *,
        redis: AnyRedis,
        keys: Keys,
        maker_fee: Decimal = Decimal("0.0025"),
        starting_balances: Mapping[str, Decimal] | None = None,
        half_spread: Decimal = Decimal("0.0001"),
        clock_ms: Callable[[], int] = _wall_clock_ms,
        faults: PaperFaults | None = None,
    ) -> None:
        if not (0 <= maker_fee < 1) or not (0 <= half_spread < 1):
            raise ValueError("maker_fee and half_spread must be in [0, 1)")
        self._redis = redis
        self._maker_fee = maker_fee
        self._half_spread = half_spread
        self._clock_ms = clock_ms
        self._faults = faults
        self._k = {name: keys.paper(name) for name in KEY_NAMES}
        self._place_keys = [self._k[name] for name in _PLACE_KEYS]
        self._final_keys = [self._k[name] for name in _FINAL_KEYS]
        self._starting: list[str] = []
        for asset, amount in (starting_balances or {}).items():
            if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
                raise ValueError(f"starting balance of {asset} must be a decimal >= 0")
            self._starting += [asset, str(bounded(asset, to_units(amount, ROUND_DOWN)))]
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
        self._observe_many = register(OBSERVE_MANY_LUA)
        self._set_price = register(SET_PRICE_LUA)
        self._init = register(INIT_LUA)
        self._by_client = register(BY_CLIENT_LUA)
        self._open = register(OPEN_LUA)
        self._forget = register(FORGET_LUA)
        self._changes = register(CHANGES_LUA)

    async def _run(
        self, script: AsyncScript, keys: list[str], args: Sequence[Any] = (), *, hot: bool = False
    ) -> Any:
        """Every script call of the exchange (EVALSHA; NOSCRIPT reloads the script). A hot
        call (placing, observing fills) shares a round trip with the calls of the same tick."""
        if hot:
            return await self._pipeliner.run(script, keys, args)
        return await script(keys=keys, args=args)

    # --- setup and faults ----------------------------------------------------------
    async def _ensure_init(self) -> None:
        """Apply the starting balances once per key prefix (SET NX in the same script)."""
        if self._initialized:
            return
        async with self._init_lock:
            if not self._initialized:
                await self._run(self._init, [self._k["init"], self._k["free"]], self._starting)
                self._initialized = True

    async def _count_faults(self, kinds: Counter[str]) -> None:
        """Count injected faults in the account's `faults` hash (kind -> count)."""
        for kind, count in kinds.items():
            await self._redis.hincrby(self._k["faults"], kind, count)

    async def _maybe_fail(self, call: str) -> None:
        """Raise the TransientError of a fault drawn for this call (PAPER_FAULTS), if any."""
        if self._faults is None:
            return
        kind = self._faults.draw(call)
        if kind is not None:
            await self._count_faults(Counter((kind,)))
            raise fault_error(kind)

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
            rules = generic_rules(known)
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
        positive("price", price)
        triple, bid, tick = await self._price_args(symbol, price)
        keys = [self._k["prices"], self._k["bids"], self._k["ticks"]]
        stored = await self._run(self._set_price, keys, [symbol, triple, bid, tick])
        self._remember_tick(symbol, stored)

    async def quote(self, symbol: str) -> Quote:
        """Bid/ask around the last price: last x (1 -/+ half_spread), rounded out to the tick;
        and the last price itself."""
        split_symbol(symbol)
        await self._maybe_fail("fetch")
        raw = await self._redis.hget(self._k["prices"], symbol)
        if raw is None:
            raise TransientError(f"no price yet for {symbol}")
        last, bid, ask = as_text(raw).split(" ")
        return Quote(bid=Decimal(bid), ask=Decimal(ask), last=Decimal(last))

    # --- fills ---------------------------------------------------------------------
    async def observe_fills(self, fills: Sequence[SeenFill]) -> None:
        """observe_fill for several fills in one script call (the coverage batch)."""
        if not fills:
            return
        await self._ensure_init()
        k = self._k
        keys = [k["seen_fills"], k["free"], k["orders"], k["prices"], k["bids"], k["ticks"]]
        rows = []
        for f in fills:
            base, _ = split_symbol(f.symbol)
            rounding = ROUND_DOWN if f.side == "buy" else ROUND_UP
            units = bounded("quantity", to_units(f.quantity, rounding))
            triple, bid, tick = await self._price_args(f.symbol, f.price)
            rows.append(
                [f.fill_id, f.order_id, f.side, base, str(units), f.symbol, triple, bid, tick]
            )
        stored = await self._run(self._observe_many, keys, [orjson.dumps(rows)], hot=True)
        for f, tick in zip(fills, stored, strict=True):
            self._remember_tick(f.symbol, tick)

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
        positive("price", price)
        if not isinstance(quantity, Decimal) or not quantity.is_finite() or quantity < 0:
            raise PermanentError(f"quantity must be a decimal >= 0, got {quantity!r}")
        # credits round down, debits round up: never more than the trader really has
        units = bounded("quantity", to_units(quantity, ROUND_DOWN if side == "buy" else ROUND_UP))
        await self._ensure_init()
        triple, bid, tick = await self._price_args(symbol, price)
        k = self._k
        keys = [k["seen_fills"], k["free"], k["orders"], k["prices"], k["bids"], k["ticks"]]
        args = [fill_id, order_id, side, base, str(units), symbol, triple, bid, tick]
        _, stored = await self._run(self._observe, keys, args, hot=True)
        self._remember_tick(symbol, stored)

    async def fill_order(self, order_id: str, quantity: Decimal | None = None) -> Order:
        """Fill all (None) or part of an open order at its limit price (simulator hook).

        Never fills more than the remainder; an order that is not open is returned as is.
        The quote credit is price x qty rounded down to 1e-8, less the maker fee rounded up.
        """
        if quantity is not None:
            positive("quantity", quantity)
        await self._ensure_init()
        k = self._k
        while True:
            raw = await self._redis.hget(k["orders"], order_id)
            if raw is None:
                raise OrderNotFound(f"no paper order {order_id[:40]!r}")
            o = orjson.loads(raw)
            if o["st"] != OrderStatus.OPEN:
                return decode_order(raw)
            remaining = int(o["rem"])
            qty = remaining if quantity is None else min(to_units(quantity, ROUND_DOWN), remaining)
            if qty <= 0:
                return decode_order(raw)
            with localcontext() as ctx:
                ctx.prec = 60
                gross = Decimal(o["px"]) * from_units(qty)
                fee = to_units(gross * self._maker_fee, ROUND_UP)
                net = to_units(gross, ROUND_DOWN) - fee
            filled = int(o["fil"]) + qty
            status = OrderStatus.CLOSED if qty == remaining else OrderStatus.OPEN
            args = [order_id, o["fil"], filled, remaining - qty, qty, net, status.value]
            outcome, raw = await self._run(self._fill, self._final_keys, args)
            if outcome == b"ok":
                return decode_order(raw)
            if outcome == b"missing":
                raise OrderNotFound(f"no paper order {order_id[:40]!r}")
            # stale: another process filled or canceled it meanwhile; look again

    # --- orders --------------------------------------------------------------------
    async def place_limit_sell(
        self,
        *,
        symbol: str,
        amount: Decimal,
        price: Decimal,
        client_id: str,
        post_only: bool = True,
    ) -> Order:
        """Check the client id, the post-only rule and the free balance, then lock it: one
        script."""
        request = SellRequest(
            symbol=symbol, amount=amount, price=price, client_id=client_id, post_only=post_only
        )
        (result,) = await self.place_limit_sells((request,))
        if isinstance(result, ExchangeError):
            raise result
        return result

    async def place_limit_sells(
        self, requests: Sequence[SellRequest]
    ) -> list[Order | ExchangeError]:
        """The whole batch in one script: each request as `place_limit_sell` would place it
        after the ones before it (a client id opened earlier in the batch is a duplicate,
        a balance locked earlier is not free), results in request order."""
        results: list[Order | ExchangeError | None] = [None] * len(requests)
        pending: list[tuple[int, list[str]]] = []  # (index, the request's script args)
        lost: list[int] = []
        injected: Counter[str] = Counter()
        for i, request in enumerate(requests):
            try:
                args = place_args(request)
            except ExchangeError as exc:  # refused before reaching the exchange
                results[i] = exc
                continue
            if self._faults is not None:
                kind = self._faults.draw("place")
                if kind in _REFUSED_BEFORE_PLACING:
                    injected[kind] += 1
                    results[i] = fault_error(kind)
                    continue
                if kind == "post_only" and request.post_only:
                    args[-1] = "fault"
                elif kind == "lost_response":
                    lost.append(i)
            pending.append((i, args))
        if pending:
            await self._ensure_init()
            await self._place_pending(requests, pending, results, injected)
        for i in lost:  # placed (or refused) all the same; the caller never learns which
            injected["lost_response"] += 1
            results[i] = fault_error("lost_response")
        if injected:
            await self._count_faults(injected)
        done = [r for r in results if r is not None]
        if len(done) != len(requests):
            raise RuntimeError("paper place script left a request without an answer")
        return done

    async def _place_pending(
        self,
        requests: Sequence[SellRequest],
        pending: list[tuple[int, list[str]]],
        results: list[Order | ExchangeError | None],
        injected: Counter[str],
    ) -> None:
        """One PLACE_LUA call for every pending request (again, only on an id collision)."""
        ts = str(self._clock_ms())
        while pending:
            argv = [ts]
            for _, args in pending:
                argv += (new_order_id(), *args)
            reply = await self._run(self._place, self._place_keys, argv, hot=True)
            if not reply:
                raise RuntimeError("paper place script answered nothing")
            answered = 0
            for outcome, detail in zip(reply[::2], reply[1::2], strict=True):
                if outcome == b"collision":  # 80 random bits met: the rest again, new ids
                    break
                if detail == b"fault":
                    injected["post_only"] += 1
                i = pending[answered][0]
                results[i] = placed(requests[i], outcome, detail)
                answered += 1
            pending = pending[answered:]

    async def cancel_order(self, *, symbol: str, order_id: str) -> Order:
        """Cancel and unlock the remainder; an order already closed is returned unchanged."""
        await self._maybe_fail("cancel")
        await self._ensure_init()
        outcome, raw = await self._run(self._cancel, self._final_keys, [order_id])
        if outcome == b"missing":
            raise OrderNotFound(f"no paper order {order_id[:40]!r}")
        return decode_order(raw)

    async def fetch_order(self, *, symbol: str, order_id: str) -> Order | None:
        await self._maybe_fail("fetch")
        raw = await self._redis.hget(self._k["orders"], order_id)
        return None if raw is None else decode_order(raw)

    async def fetch_order_by_client_id(self, *, symbol: str, client_id: str) -> Order | None:
        """The most recent order placed with this client id (ids are account-wide, as on Kraken)."""
        await self._maybe_fail("fetch")
        raw = await self._run(self._by_client, [self._k["clients"], self._k["orders"]], [client_id])
        return None if raw is None else decode_order(raw)

    async def open_orders(self, symbol: str | None = None) -> list[Order]:
        await self._maybe_fail("fetch")
        raws = await self._run(self._open, [self._k["open_clients"], self._k["orders"]])
        return [o for o in sorted_orders(raws) if symbol is None or o.symbol == symbol]

    async def order_changes(self, cursor: str | None) -> OrderChanges:
        """The orders changed since `cursor` (any status), or every open order when the
        cursor is None or older than the change log keeps: one consistent read."""
        await self._maybe_fail("fetch")
        k = self._k
        keys = [k["changes"], k["change_seq"], k["changes_floor"], k["open_clients"], k["orders"]]
        seq, mode, *raws = await self._run(self._changes, keys, [cursor or ""])
        return OrderChanges(
            cursor=str(int(seq)), complete=mode == b"full", orders=sorted_orders(raws)
        )

    async def orders(self, symbol: str | None = None) -> list[Order]:
        """Every order ever placed, oldest first (simulator hook, for tests and reports)."""
        raws = await self._redis.hvals(self._k["orders"])
        return [o for o in sorted_orders(raws) if symbol is None or o.symbol == symbol]

    async def forget(self, *, order_ids: Sequence[str], fill_ids: Sequence[str]) -> int:
        """Drop the records of a session that is removed (session retention): its orders
        that are no longer open, with their client ids, and its seen fills, so that no
        paper record lives forever. An open order is kept. Returns the orders dropped."""
        keys = [self._k[name] for name in ("orders", "clients", "seen_fills", "changes")]
        forgotten = 0
        orders, fills = list(order_ids), list(fill_ids)
        for i in range(0, max(len(orders), len(fills), 1), FORGET_CHUNK):
            part, seen = orders[i : i + FORGET_CHUNK], fills[i : i + FORGET_CHUNK]
            if part or seen:
                forgotten += int(await self._run(self._forget, keys, [len(part), *part, *seen]))
        return forgotten

    # --- balances ------------------------------------------------------------------
    async def free_balance(self, asset: str) -> Decimal:
        await self._maybe_fail("fetch")
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

    async def fault_counts(self) -> dict[str, int]:
        """Faults injected so far into this account, by kind, across processes."""
        raw = await self._redis.hgetall(self._k["faults"])
        return {as_text(kind): int(count) for kind, count in sorted(raw.items())}

    async def close(self) -> None:
        """Nothing to release: the Redis client is shared and closed by its owner."""
