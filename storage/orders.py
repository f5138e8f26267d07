"""The trader's orders as `order` events report them: a newer status never loses to an older one.

`orders:{sid}` maps order id -> the latest `order` event (JSON). Events of one order may
arrive out of order (a replay of a range, two consumers), so a write wins only if its
`ts` is newer — or, at an equal `ts`, if its status is further along (open <
partially filled < a final status); an identical event changes nothing.
"""

from __future__ import annotations

import msgspec

from events import Order
from storage.keys import Keys
from storage.redis import AnyRedis

_encoder = msgspec.json.Encoder(decimal_format="string")

# KEYS: orders hash, session hash, changes stream.
# ARGV: order id, ts, rank, JSON (the event with its rank)
_NEWER = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local old = cjson.decode(cur)
  local ts, rank = tonumber(ARGV[2]), tonumber(ARGV[3])
  local old_ts, old_rank = tonumber(old['ts']), tonumber(old['rank'] or 0)
  if ts < old_ts or (ts == old_ts and rank <= old_rank) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
if redis.call('HEXISTS', KEYS[2], 'ended_at') == 1 then
  redis.call('XADD', KEYS[3], '*', 'orders', ARGV[1])
end
return 1
"""

FINAL = {"filled", "closed", "canceled", "cancelled", "expired", "rejected"}


def status_rank(status: str) -> int:
    """How far along an order status is: open 0, partially filled 1, final 2."""
    low = status.lower()
    if low in FINAL:
        return 2
    return 1 if "partial" in low else 0


class OrderBook:
    """Writes `order` events; `record` returns whether the event was newer than the stored."""

    def __init__(self, redis: AnyRedis, keys: Keys) -> None:
        self.keys = keys
        self._newer = redis.register_script(_NEWER)

    async def record(self, event: Order) -> bool:
        rank = status_rank(event.status)
        payload = _encoder.encode(event)[:-1] + b',"rank":%d}' % rank
        applied = await self._newer(
            keys=[
                self.keys.orders(event.session_id),
                self.keys.session(event.session_id),
                self.keys.changes(event.session_id),
            ],
            args=[event.order_id, event.ts, rank, payload],
        )
        return bool(applied)
