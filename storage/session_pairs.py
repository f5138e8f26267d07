"""A session's pairs (`pairs:{sid}`), bounded by MAX_PAIRS for every event that names one.

A `session_started`, a `fill` or an `order` may name pairs the session has not traded
yet; each is admitted into the session's set only while the set stays within
MAX_PAIRS, in one script (so concurrent lanes of a session cannot overshoot together).
An event that would take the session past the bound is refused whole: nothing of it
is admitted, and the caller dead-letters it. A pair admitted once stays admitted, so
duplicates and replays of an accepted event are accepted again. Which of two events
naming new pairs concurrently gets the last slot is not defined.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from storage.keys import Keys
from storage.redis import AnyRedis, as_text
from storage.scripts import Script, run

# KEYS: the pairs set.  ARGV: max pairs, then the event's distinct symbols.
# Returns {0} when admitted, else {the number of pairs the session would have, new symbols...}.
_ADMIT = Script("""
local new = {}
for i = 2, #ARGV do
  if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 0 then new[#new + 1] = ARGV[i] end
end
if #new == 0 then return {0} end
local total = redis.call('SCARD', KEYS[1]) + #new
if total > tonumber(ARGV[1]) then return {total, unpack(new)} end
redis.call('SADD', KEYS[1], unpack(new))
return {0}
""")
CACHE_LIMIT = 100_000  # (session, pair) admissions remembered by a process


@dataclass(frozen=True, slots=True)
class Refusal:
    """What an event would have made of the session: `total` distinct pairs, `new` ones."""

    total: int
    new: tuple[str, ...]


@dataclass
class SessionPairs:
    """Admission of pairs into sessions; admissions are remembered (a pair admitted stays
    admitted), so the hot path asks Redis only for a session's first event of a pair."""

    redis: AnyRedis
    keys: Keys
    max_pairs: int
    _admitted: set[tuple[str, str]] = field(default_factory=set)

    def known(self, sid: str, symbol: str) -> bool:
        """Whether this process has seen the pair admitted for the session."""
        return (sid, symbol) in self._admitted

    async def admit(self, sid: str, symbols: Sequence[str]) -> Refusal | None:
        """Add the symbols to the session's pairs if it keeps at most `max_pairs`;
        otherwise add nothing and say how many pairs it would have had."""
        distinct = [s for s in dict.fromkeys(symbols) if (sid, s) not in self._admitted]
        if not distinct:
            return None
        reply = await run(self.redis, _ADMIT, [self.keys.pairs(sid)], [self.max_pairs, *distinct])
        if int(reply[0]):
            return Refusal(int(reply[0]), tuple(as_text(s) for s in reply[1:]))
        if len(self._admitted) + len(distinct) > CACHE_LIMIT:
            self._admitted.clear()
        self._admitted.update((sid, s) for s in distinct)
        return None
