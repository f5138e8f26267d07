"""Per-pair trading-rate counters in Redis, shared by every mmops process.

An exchange like Kraken keeps one counter per pair that grows with every order placed
or cancelled and decays linearly with time; above a threshold it refuses orders. This
module keeps mmops' share of that counter, one hash per pair:

    <prefix>ratebudget:{<exchange>:<symbol>}   c: counter (millionths), t: its time (ms),
                                                 o: mmops' open orders on the pair

One Lua script decays the counter by the time elapsed since `t` (Redis TIME, so every
process agrees on the clock), then reserves the cost only if it fits the limit — in one
atomic step, so two processes can never both take the last unit. The braces make each
pair its own Redis Cluster hash slot: every script touches one key. A hash with no open
orders expires once its counter has decayed to zero (plus a minute), so idle pairs
cost no memory. `<prefix>ratebudget:pairs:<exchange>` is a set of the pairs seen, for
`mmops status` (written outside the script: an index, not state);
`<prefix>ratebudget:{<exchange>:<symbol>}:once:<what>` rations alerts per pair.

Numbers are integers in the script: counter units are millionths (SCALE) and the decay
is given in millionths per millisecond. The model (tiers, penalties) lives in
trading.kraken_limits; this module only stores and decays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from storage.redis import AnyRedis
from storage.scripts import load, queue

SCALE = 1_000_000  # counter units per order of cost

# ARGV: cost, limit, decay per ms, open-order delta, open-order cap, mode
#   try:      reserve cost (and the open orders) if both fit, else refuse with the reason
#   record:   add unconditionally (what happened anyway: a trader's or a forced call)
#   saturate: raise the counter to at least `cost` (after the exchange said "rate limit")
#   sync:     set the open-order count to the delta (the exchange's truth)
# returns {granted 0/1, wait ms (-1: never fits), counter, open orders, reason}
_SPEND = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'c', 't', 'o')
local c = tonumber(h[1]) or 0
local t = tonumber(h[2]) or ms
local o = tonumber(h[3]) or 0
local cost = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local decay = tonumber(ARGV[3])
local opens = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local mode = ARGV[6]
if ms > t then
  c = c - (ms - t) * decay
  if c < 0 then c = 0 end
  t = ms
end
local ok, wait, reason = 1, 0, ''
if mode == 'try' then
  if opens > 0 and o + opens > cap then
    ok, reason = 0, 'open_orders_limit'
  elseif c + cost > limit then
    ok, reason = 0, 'rate_budget'
    if cost > limit then
      wait = -1
    else
      wait = math.ceil((c + cost - limit) / decay)
    end
  else
    c = c + cost
    o = o + opens
  end
elseif mode == 'record' then
  c = c + cost
  o = o + opens
elseif mode == 'saturate' then
  if c < cost then c = cost end
elseif mode == 'sync' then
  o = opens
end
if o < 0 then o = 0 end
redis.call('HSET', KEYS[1], 'c', c, 't', t, 'o', o)
if o == 0 then
  redis.call('PEXPIRE', KEYS[1], math.ceil(c / decay) + 60000)
else
  redis.call('PERSIST', KEYS[1])
end
return {ok, wait, c, o, reason}
"""

# ARGV: decay per ms. Returns {counter decayed to now, open orders, now ms}; writes nothing.
_READ = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'c', 't', 'o')
local c = tonumber(h[1]) or 0
local t = tonumber(h[2]) or ms
if ms > t then
  c = c - (ms - t) * tonumber(ARGV[1])
  if c < 0 then c = 0 end
end
return {c, tonumber(h[3]) or 0, ms}
"""

MODES = ("try", "record", "saturate", "sync")


@dataclass(frozen=True, slots=True)
class SpendResult:
    granted: bool
    wait_ms: int  # -1: the cost is above the limit and never fits
    counter: int  # millionths, after the call
    open_orders: int
    reason: str  # "" | "rate_budget" | "open_orders_limit"


@dataclass(frozen=True, slots=True)
class CounterState:
    counter: int  # millionths, decayed to now
    open_orders: int


class RateCounters:
    """The per-pair counters of one exchange (see the module docstring)."""

    def __init__(self, redis: AnyRedis, *, prefix: str = "", exchange: str = "kraken") -> None:
        self._redis = redis
        self._prefix = prefix
        self._exchange = exchange
        self._spend = redis.register_script(_SPEND)
        self._read = redis.register_script(_READ)
        self._indexed: set[str] = set()

    def key(self, symbol: str) -> str:
        return f"{self._prefix}ratebudget:{{{self._exchange}:{symbol}}}"

    @property
    def index(self) -> str:
        return f"{self._prefix}ratebudget:pairs:{self._exchange}"

    async def spend(
        self,
        symbol: str,
        *,
        cost: int,
        limit: int,
        decay_per_ms: int,
        open_delta: int = 0,
        open_cap: int = 0,
        mode: str = "try",
    ) -> SpendResult:
        """One atomic decay-then-update of `symbol`'s counter (modes: see _SPEND)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if decay_per_ms < 1:
            raise ValueError("decay_per_ms must be at least 1")
        await self._remember(symbol)
        raw: Sequence[Any] = await self._spend(
            keys=[self.key(symbol)],
            args=[cost, limit, decay_per_ms, open_delta, open_cap, mode],
        )
        reason = raw[4].decode() if isinstance(raw[4], bytes) else str(raw[4] or "")
        return SpendResult(
            granted=int(raw[0]) == 1,
            wait_ms=int(raw[1]),
            counter=int(raw[2]),
            open_orders=int(raw[3]),
            reason=reason,
        )

    async def read(self, symbols: Iterable[str], *, decay_per_ms: int) -> dict[str, CounterState]:
        """Every symbol's counter decayed to now, in one pipeline (no writes)."""
        names = list(symbols)
        if not names:
            return {}
        await load(self._redis, self._read)  # a status read: load rather than handle NOSCRIPT
        async with self._redis.pipeline(transaction=False) as pipe:
            for symbol in names:
                queue(pipe, self._read, [self.key(symbol)], [decay_per_ms])
            rows = await pipe.execute()
        return {
            symbol: CounterState(counter=int(row[0]), open_orders=int(row[1]))
            for symbol, row in zip(names, rows, strict=True)
        }

    async def first_in(self, symbol: str, what: str, every_ms: int) -> bool:
        """True for the first caller per `every_ms` (any process): e.g. one alert an hour."""
        key = f"{self.key(symbol)}:once:{what}"  # the pair's hash slot
        return bool(await self._redis.set(key, "1", nx=True, px=every_ms))

    async def symbols(self) -> list[str]:
        """The pairs any process has spent on (the index; entries outlive idle counters)."""
        members = await self._redis.smembers(self.index)
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def _remember(self, symbol: str) -> None:
        if symbol not in self._indexed:
            await self._redis.sadd(self.index, symbol)
            self._indexed.add(symbol)
