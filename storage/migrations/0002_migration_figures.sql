-- Figures the migrator computes from a session's positions (workers/migrator.py).
-- realized_pnl: on a sell fill, the P&L it realized (sell proceeds - unit cost of what it
-- closed - both fees, quote currency); NULL on buys. It lets P&L be summed by UTC day.
ALTER TABLE fills ADD COLUMN IF NOT EXISTS realized_pnl NUMERIC;
-- open_positions: positions still holding inventory at the end (covered by a live TP or not).
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS open_positions INTEGER NOT NULL DEFAULT 0;
-- duplicate_fills: fills recorded under another fill id with the same content (the UNIQUE
-- key), stored once.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS duplicate_fills INTEGER NOT NULL DEFAULT 0;
-- order_type: the fill event's optional order_type (the type of an order known only from fills).
ALTER TABLE fills ADD COLUMN IF NOT EXISTS order_type TEXT;
-- trade_fees: the fees of the pair's round trips (each sell's fee + the sold quantity's
-- share of its position's buy fees), i.e. the fees inside total_pnl; total_fees also
-- counts the buy fees of what is still held.
ALTER TABLE session_pairs ADD COLUMN IF NOT EXISTS trade_fees NUMERIC NOT NULL DEFAULT 0;
