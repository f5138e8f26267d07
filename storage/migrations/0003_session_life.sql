-- A session's whole life (docs/contract.md §3 Migration): migrated at its end, then kept in
-- step with every later change (workers/migration/sync.py). Applies to both layouts (plain,
-- and fills/orders hash-partitioned by session_id): no unique key here lacks session_id.

-- closed_at: set when the session's last position is closed and no TP of it is live (its
-- P&L is final from then on). fills_expected: the `fills` of its session_ended.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS closed_at TIMESTAMPTZ;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS fills_expected INTEGER;
-- sync_cursor: the last entry of the session's changes stream (changes:{sid}) whose change
-- is in these tables, written in the same transaction as the change (exactly once). NULL on
-- a session migrated before this migration: its first sync re-migrates it whole.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS sync_cursor TEXT;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS synced_at TIMESTAMPTZ;
CREATE INDEX IF NOT EXISTS sessions_not_closed ON sessions (ended_at)
    WHERE closed_at IS NULL AND migrated_at IS NOT NULL;

-- status_at / status_rank: the time of the `order` event that set orders.status (NULL for
-- our TPs and for orders known only from fills) and how far along the status is (open 0,
-- partially filled 1, final 2; storage/orders.py status_rank). An update of a stored order
-- changes its status only if (status_at, status_rank) is not older: never backwards.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS status_at TIMESTAMPTZ;
ALTER TABLE orders ADD COLUMN IF NOT EXISTS status_rank SMALLINT NOT NULL DEFAULT 0;
UPDATE orders SET status_rank = CASE
        WHEN lower(status) IN ('filled', 'closed', 'canceled', 'cancelled', 'expired', 'rejected') THEN 2
        WHEN lower(status) LIKE '%partial%' THEN 1
        ELSE 0 END
    WHERE status_rank = 0 AND (lower(status) LIKE '%partial%'
        OR lower(status) IN ('filled', 'closed', 'canceled', 'cancelled', 'expired', 'rejected'));

-- One row per position, its figures as of the last migration or sync: every per-pair and
-- per-session P&L figure is a sum over these rows, so a sync rewrites only the positions a
-- change touched and re-applying a change is harmless. Exact sums (not rounded).
CREATE TABLE IF NOT EXISTS positions (
    session_id    TEXT NOT NULL,
    id            TEXT NOT NULL,
    symbol        TEXT NOT NULL,
    opened_at     TIMESTAMPTZ,
    quantity      NUMERIC NOT NULL,           -- bought (net of a fee charged in the base asset)
    open_quantity NUMERIC NOT NULL,           -- bought and not sold yet
    on_book       NUMERIC NOT NULL,           -- unfilled quantity of its live and pending TPs
    uncovered     BOOLEAN NOT NULL,           -- some quantity neither sold nor under a TP (not dust)
    realized_pnl  NUMERIC NOT NULL,
    round_trips   INTEGER NOT NULL,
    wins          INTEGER NOT NULL,
    spread_sum    NUMERIC NOT NULL,           -- sum over its round trips of (price - unit cost) / unit cost
    trade_fees    NUMERIC NOT NULL,
    CONSTRAINT positions_pkey PRIMARY KEY (session_id, id)
);
CREATE INDEX IF NOT EXISTS positions_session_symbol ON positions (session_id, symbol);
-- the positions that keep a session open: an open quantity or a TP on the book
CREATE INDEX IF NOT EXISTS positions_open ON positions (session_id)
    WHERE open_quantity > 0 OR on_book > 0;

-- Per pair, so that every session total is a sum over its pairs.
ALTER TABLE session_pairs ADD COLUMN IF NOT EXISTS total_volume NUMERIC NOT NULL DEFAULT 0;
ALTER TABLE session_pairs ADD COLUMN IF NOT EXISTS open_positions INTEGER NOT NULL DEFAULT 0;
ALTER TABLE session_pairs ADD COLUMN IF NOT EXISTS uncovered_positions INTEGER NOT NULL DEFAULT 0;
