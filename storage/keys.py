"""Every Redis key and stream name mmops uses, in one place.

Names are the wire contract (docs/contract.md §2). The braces are literal Redis Cluster hash
tags: every key of a session lives in one slot, so Lua scripts may touch them
together. `prefix` (setting MM_KEY_PREFIX, default empty) namespaces a whole
deployment; tests use it to share one Redis without seeing each other.

The input stream is `shards` streams (setting MM_STREAM_SHARDS, contract §6): with one,
it is `mm:events` (the MM_STREAM value); with N > 1, `mm:events:{0}` .. `mm:events:{N-1}`,
each its own hash slot, and a session's events all go to shard crc32(sid) mod N.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from base.settings import Settings
from events.shards import shard_of


def hash_tag(key: str) -> str | None:
    """What Redis Cluster hashes of `key` when it has a hash tag (the text between the first
    `{` and the next `}`, if not empty); None when the whole key is hashed."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = ""
    events: str = "mm:events"
    shards: int = 1

    @classmethod
    def of(cls, settings: Settings) -> Keys:
        return cls(settings.key_prefix, settings.stream, settings.stream_shards)

    # --- streams -------------------------------------------------------------
    @property
    def stream(self) -> str:
        """The unsharded input stream (with MM_STREAM_SHARDS > 1 use shard_stream/streams)."""
        return self.prefix + self.events

    def shard_stream(self, shard: int) -> str:
        """Input stream of one shard: `mm:events` when unsharded, else `mm:events:{n}`."""
        if not 0 <= shard < self.shards:
            raise ValueError(f"shard {shard} is not in 0..{self.shards - 1}")
        if self.shards == 1:
            return self.stream
        return f"{self.prefix}{self.events}:{{{shard}}}"

    @property
    def streams(self) -> list[str]:
        """Every shard's input stream, shard 0 first."""
        return [self.shard_stream(n) for n in range(self.shards)]

    def stream_for(self, sid: str) -> str:
        """The input stream that carries session `sid`'s events."""
        return self.shard_stream(shard_of(sid, self.shards))

    @property
    def takeprofits(self) -> str:
        return self.prefix + "mm:takeprofits"

    @property
    def alerts(self) -> str:
        return self.prefix + "mm:alerts"

    @property
    def dead(self) -> str:
        return self.prefix + "mm:dead"

    # --- contract keys per session (docs/contract.md §2) ----------------------
    def tp_attempt(self, sid: str, position_id: str) -> str:
        return f"{self.prefix}tp_attempt:{{{sid}}}:{position_id}"

    def tp_order(self, sid: str, order_id: str) -> str:
        return f"{self.prefix}tp_order:{{{sid}}}:{order_id}"

    def settlement_status(self, sid: str) -> str:
        return f"{self.prefix}settlement:status:{{{sid}}}"

    def settlement_last_run(self, sid: str) -> str:
        return f"{self.prefix}settlement:last_run:{{{sid}}}"

    def settlement_lock(self, sid: str) -> str:
        return f"{self.prefix}lock:settlement:{{{sid}}}"

    def migration_completed(self, sid: str) -> str:
        return f"{self.prefix}migration:completed:{{{sid}}}"

    def metrics_settlement(self, sid: str) -> str:
        return f"{self.prefix}metrics:settlement:{{{sid}}}"

    def metrics_takeprofit(self, sid: str) -> str:
        return f"{self.prefix}metrics:takeprofit:{{{sid}}}"

    def metrics_migration(self, sid: str) -> str:
        return f"{self.prefix}metrics:migration:{{{sid}}}"

    @property
    def risk_halt(self) -> str:
        return self.prefix + "risk:halt"

    # --- mmops' own per-session state (documented in the README) -------------
    def session(self, sid: str) -> str:
        """hash: started_at, ended_at, pairs, end_id, fills_expected, end_reason."""
        return f"{self.prefix}session:{{{sid}}}"

    def fills(self, sid: str) -> str:
        """hash fill_id -> encoded fill: the once-per-fill guard and the migrator's source."""
        return f"{self.prefix}fills:{{{sid}}}"

    def orders(self, sid: str) -> str:
        """hash order_id -> encoded trader order (from `order` events and buy fills)."""
        return f"{self.prefix}orders:{{{sid}}}"

    def positions(self, sid: str) -> str:
        """hash position_id -> encoded position (buys, closes, TP steps, version)."""
        return f"{self.prefix}positions:{{{sid}}}"

    def pairs(self, sid: str) -> str:
        """set of the symbols the session traded (learned from its fills)."""
        return f"{self.prefix}pairs:{{{sid}}}"

    def outbox(self, sid: str) -> str:
        """stream of a commit's writes to global keys, on a Redis Cluster (storage/outbox.py)."""
        return f"{self.prefix}outbox:{{{sid}}}"

    def changes(self, sid: str) -> str:
        """stream of the session's changes after its end (positions, fills, orders touched),
        read by the migrator to keep PostgreSQL in step; trimmed as it catches up."""
        return f"{self.prefix}changes:{{{sid}}}"

    def tp_clients(self, sid: str) -> str:
        """hash client id -> position id of every step claimed (a TP fill may name only it)."""
        return f"{self.prefix}tp_clients:{{{sid}}}"

    def tp_inflight(self, sid: str) -> str:
        """hash client id -> symbol of the steps claimed and not yet confirmed or refused."""
        return f"{self.prefix}tp_inflight:{{{sid}}}"

    def tp_orders(self, sid: str) -> str:
        """set of the session's TP order ids (index of the tp_order:{sid}:* hashes)."""
        return f"{self.prefix}tp_orders:{{{sid}}}"

    def session_keys(
        self, sid: str, order_ids: Iterable[str] = (), position_ids: Iterable[str] = ()
    ) -> list[str]:
        """Every per-session key of `sid` (the contract's and mmops' own, all tagged {sid}):
        what session retention removes. `order_ids`/`position_ids` name the session's TP
        orders and positions, for the keys that carry them."""
        out = [
            self.session(sid),
            self.fills(sid),
            self.orders(sid),
            self.positions(sid),
            self.pairs(sid),
            self.changes(sid),
            self.outbox(sid),
            self.tp_clients(sid),
            self.tp_inflight(sid),
            self.tp_orders(sid),
            self.settlement_status(sid),
            self.settlement_last_run(sid),
            self.settlement_lock(sid),
            self.migration_completed(sid),
            self.metrics_settlement(sid),
            self.metrics_takeprofit(sid),
            self.metrics_migration(sid),
            self.sweeper_view(sid),
        ]
        out += [self.tp_order(sid, order_id) for order_id in order_ids]
        out += [self.tp_attempt(sid, position_id) for position_id in position_ids]
        return out

    def sweeper_view(self, sid: str) -> str:
        """The sweeper's snapshot of the session's figures (a cache: workers/figures.py)."""
        return f"{self.prefix}sweeper:view:{{{sid}}}"

    # --- global indexes --------------------------------------------------------
    @property
    def sessions(self) -> str:
        """zset sid -> last activity (epoch ms): the sweeper's discovery index."""
        return self.prefix + "mm:sessions"

    @property
    def sessions_ended(self) -> str:
        """zset sid -> ended_at (epoch ms) of sessions not migrated yet."""
        return self.prefix + "mm:sessions:ended"

    @property
    def migration_waiting(self) -> str:
        """hash sid -> JSON: sessions whose end the migrator saw and acked, waiting (in the
        grace period) for fills the end counted; its periodic check migrates them."""
        return self.prefix + "mm:migration:waiting"

    def dead_marker(self, stream: str, entry_id: str) -> str:
        """set once an entry of `stream` is dead-lettered; in `mm:dead`'s hash slot."""
        return self.beside(self.dead, f"seen:{stream}:{entry_id}")

    def failures(self, group: str, stream: str) -> str:
        """hash entry id -> times `group`'s handler raised on it (poison detection); in the
        stream's hash slot, so the ack and the clean-up of the counts go to one node:
        `{mm:events}:failures:<group>`, `mm:events:{n}:failures:<group>`."""
        return self.beside(stream, f"failures:{group}")

    def beside(self, key: str, suffix: str) -> str:
        """A key in `key`'s Redis Cluster hash slot, starting with the prefix:
        `<key>:<suffix>` when `key` has a hash tag, else `<prefix>{<key>}:<suffix>`."""
        if hash_tag(key) is not None:
            return f"{key}:{suffix}"
        return f"{self.prefix}{{{key}}}:{suffix}"

    def heartbeats(self, group: str) -> str:
        """zset consumer -> last heartbeat (epoch ms) of live consumers of a group."""
        return f"{self.prefix}mm:heartbeat:{group}"

    @property
    def sweeper_lease(self) -> str:
        return self.prefix + "mm:sweeper:lease"

    @property
    def daily_pnl(self) -> str:
        return self.prefix + "mm:pnl:daily"

    @property
    def sweeper_open_sessions(self) -> str:
        """zset sid -> time (ms) the sweeper last saw the session with open positions."""
        return self.prefix + "mm:sweeper:open"

    @property
    def sweeper_state(self) -> str:
        """hash: the sweeper's last pass (last_pass_at, last_pass_ms, last_pass_by, dead_len)."""
        return self.prefix + "mm:sweeper:state"

    # --- paper exchange --------------------------------------------------------
    def paper(self, name: str) -> str:
        """paper exchange state: orders, clients, balances, locked, prices, seen_fills.

        Every key of the paper account carries the one hash tag {paper}, so all of them
        share a Redis Cluster slot and each script touches one slot (trading/paper)."""
        return f"{self.prefix}paper:{{paper}}:{name}"
