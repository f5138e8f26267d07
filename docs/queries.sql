-- mmops analysis queries (PostgreSQL), over the tables the migrator writes.
--
-- Each query starts with a "-- name: <name>" line, then what it answers; tests/test_queries.py
-- runs every one of them against sessions built by the real coverage worker and migrator.
--
-- Definitions (computed by workers/migration/ when a session is migrated; P&L and unit cost
-- are trading/pnl.py's, the fee rule trading/fees.py's):
--   realized P&L  per sell applied to a position: price * qty - sell fee - qty * unit cost,
--                 quote currency; unit cost = (sum of price * qty + buy fees) / sum of qty
--                 over the position's buy fills (the position model's own definition)
--   round trip    one sell applied to one position: a TP fill, or a FIFO share of another sell
--   win           a round trip with P&L > 0
--   avg_spread    mean over round trips of (sell price - unit cost) / unit cost
--   total_fees    every fee of the fills, in quote (a fee charged in the base asset is valued
--                 at the fill's price); trade_fees: only the fees inside realized P&L (each
--                 sell's fee + the sold quantity's share of its position's buy fees)
--   uncovered_positions  positions at the end with quantity neither sold nor under a TP
--                 (dust below the market's minimum order is not counted)
--   open_positions       positions still holding inventory (under a TP or not)
--   closed_at     set once no position of the session is open and none of its TPs is live:
--                 from then on its P&L is final. Until then the migrator keeps the session's
--                 rows in step with every change after its end (TP fills, reprices, order
--                 statuses), so every figure includes the fills after the end.
--   positions     one row per position with its figures (exact sums); session_pairs and
--                 sessions hold their sums, rounded.
-- Money columns of sessions, session_pairs and fills are rounded half-even to 1e-10 when stored.
--
-- Layouts: every query reads the same on plain tables and after `mmops db upgrade
-- --partitions N` (fills and orders hash-partitioned by session_id; tests/test_partitions*.py
-- run them on both). A filter or join on session_id lets PostgreSQL (and Citus) go to the
-- one partition (or node) of that session; ids are unique per session (PK (id, session_id)
-- when partitioned), so join fills to orders on (session_id, order_id), not order_id alone.


-- name: pair_profitability
-- Per pair over every migrated session: round trips, wins, win rate, realized P&L, fees,
-- P&L per round trip and the average spread (sessions weighted by their round trips).
SELECT sp.symbol,
       sum(sp.round_trips)::int AS round_trips,
       sum(sp.wins)::int AS wins,
       round(sum(sp.wins)::numeric / nullif(sum(sp.round_trips), 0), 4) AS win_rate,
       sum(sp.total_pnl) AS realized_pnl,
       sum(sp.total_fees) AS fees,
       round(sum(sp.total_pnl) / nullif(sum(sp.round_trips), 0), 10) AS pnl_per_round_trip,
       round(sum(sp.avg_spread * sp.round_trips) / nullif(sum(sp.round_trips), 0), 10) AS avg_spread
FROM session_pairs sp
JOIN sessions s ON s.id = sp.session_id
WHERE s.migrated_at IS NOT NULL
GROUP BY sp.symbol
ORDER BY realized_pnl DESC, sp.symbol;


-- name: fills_per_pair_per_day
-- Fills per pair per UTC day: how many (buys, sells), the volume traded (quote) and the
-- realized P&L of that day's sells.
SELECT (f.timestamp AT TIME ZONE 'UTC')::date AS day,
       f.symbol,
       count(*)::int AS fills,
       (count(*) FILTER (WHERE f.side = 'buy'))::int AS buys,
       (count(*) FILTER (WHERE f.side = 'sell'))::int AS sells,
       sum(f.price * f.quantity) AS volume,
       coalesce(sum(f.realized_pnl), 0) AS realized_pnl
FROM fills f
GROUP BY 1, 2
ORDER BY 1, 2;


-- name: fee_share_of_pnl
-- Per pair: the share of the round trips' result before fees that went to fees,
-- trade_fees / (realized P&L + trade_fees). NULL when the result before fees is not
-- positive (fees then exceed or equal the whole edge).
SELECT sp.symbol,
       sum(sp.total_pnl) AS realized_pnl,
       sum(sp.trade_fees) AS trade_fees,
       sum(sp.total_pnl) + sum(sp.trade_fees) AS pnl_before_fees,
       CASE WHEN sum(sp.total_pnl) + sum(sp.trade_fees) > 0
            THEN round(sum(sp.trade_fees) / (sum(sp.total_pnl) + sum(sp.trade_fees)), 6)
       END AS fee_share
FROM session_pairs sp
JOIN sessions s ON s.id = sp.session_id
WHERE s.migrated_at IS NOT NULL AND sp.round_trips > 0
GROUP BY sp.symbol
ORDER BY sp.symbol;


-- name: sessions_with_uncovered_positions
-- Sessions that ended with positions neither sold nor covered by a take-profit: the
-- coverage worker and the sweeper should have left none; each one is capital at risk.
SELECT s.id AS session_id,
       s.ended_at,
       s.uncovered_positions,
       s.open_positions,
       s.total_pnl
FROM sessions s
WHERE s.migrated_at IS NOT NULL AND s.uncovered_positions > 0
ORDER BY s.ended_at DESC, s.id;


-- name: daily_pnl
-- Realized P&L per UTC day of the sell, across sessions, with its running total
-- (mmops report computes drawdown and Sharpe from the same figures).
SELECT d.day,
       d.pnl,
       sum(d.pnl) OVER (ORDER BY d.day) AS cumulative
FROM (SELECT (f.timestamp AT TIME ZONE 'UTC')::date AS day, sum(f.realized_pnl) AS pnl
      FROM fills f
      JOIN sessions s ON s.id = f.session_id
      WHERE f.realized_pnl IS NOT NULL AND s.migrated_at IS NOT NULL
      GROUP BY 1) d
ORDER BY d.day;


-- name: sessions_still_open
-- Sessions that have ended but are not closed: a position still open or a TP still live.
-- Their P&L is provisional (TPs may still fill); fills_after_end counts the fills whose time
-- is after the session's end (in PostgreSQL as the migrator keeps it in step).
SELECT s.id AS session_id,
       s.ended_at,
       s.open_positions,
       (SELECT count(*) FROM orders o
        WHERE o.session_id = s.id AND o.is_take_profit
          AND o.status IN ('live', 'pending', 'partially_filled'))::int AS live_tps,
       (SELECT count(*) FROM fills f
        WHERE f.session_id = s.id AND f.timestamp > s.ended_at)::int AS fills_after_end,
       s.total_pnl
FROM sessions s
WHERE s.migrated_at IS NOT NULL AND s.ended_at IS NOT NULL AND s.closed_at IS NULL
ORDER BY s.ended_at, s.id;
