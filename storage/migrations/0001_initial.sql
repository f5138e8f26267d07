-- The docs/contract.md §2 schema: sessions, orders, fills, per-pair figures.
CREATE TABLE IF NOT EXISTS sessions (
    id            TEXT PRIMARY KEY,
    pairs         JSONB NOT NULL DEFAULT '[]'::jsonb,
    pair_count    INTEGER NOT NULL DEFAULT 0,
    total_orders  INTEGER NOT NULL DEFAULT 0,
    total_fills   INTEGER NOT NULL DEFAULT 0,
    total_pnl     NUMERIC NOT NULL DEFAULT 0,
    total_fees    NUMERIC NOT NULL DEFAULT 0,
    total_volume  NUMERIC NOT NULL DEFAULT 0,
    uncovered_positions INTEGER NOT NULL DEFAULT 0,
    end_reason    TEXT,
    started_at    TIMESTAMPTZ,
    ended_at      TIMESTAMPTZ,
    migrated_at   TIMESTAMPTZ
);

CREATE TABLE IF NOT EXISTS orders (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL,
    symbol      TEXT NOT NULL,
    pair_index  INTEGER NOT NULL,
    side        TEXT NOT NULL,
    type        TEXT NOT NULL,
    quantity    NUMERIC NOT NULL,
    price       NUMERIC NOT NULL,
    status      TEXT NOT NULL,
    is_take_profit BOOLEAN NOT NULL DEFAULT FALSE,
    position_id TEXT,
    client_order_id TEXT,
    tier        INTEGER,
    filled_quantity NUMERIC NOT NULL DEFAULT 0,
    created_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_session_symbol ON orders (session_id, symbol);

CREATE TABLE IF NOT EXISTS fills (
    id          TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL,
    order_id    TEXT NOT NULL,
    symbol      TEXT NOT NULL,
    side        TEXT NOT NULL,
    quantity    NUMERIC NOT NULL,
    price       NUMERIC NOT NULL,
    fee         NUMERIC NOT NULL,
    fee_currency TEXT,
    timestamp   TIMESTAMPTZ NOT NULL,
    UNIQUE (session_id, order_id, symbol, timestamp, price, quantity)
);
CREATE INDEX IF NOT EXISTS fills_session_symbol ON fills (session_id, symbol);

CREATE TABLE IF NOT EXISTS session_pairs (
    session_id   TEXT NOT NULL,
    symbol       TEXT NOT NULL,
    total_orders INTEGER NOT NULL DEFAULT 0,
    total_fills  INTEGER NOT NULL DEFAULT 0,
    total_pnl    NUMERIC NOT NULL DEFAULT 0,
    total_fees   NUMERIC NOT NULL DEFAULT 0,
    avg_spread   NUMERIC,
    round_trips  INTEGER NOT NULL DEFAULT 0,
    wins         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, symbol)
);
