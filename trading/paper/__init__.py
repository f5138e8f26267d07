"""The paper exchange: a simulated spot exchange whose whole state lives in Redis.

Every worker process builds its own PaperExchange on the shared Redis, so they all see
the same orders, balances and prices. Each operation that reads and then writes is one
Lua script (EVALSHA), so two processes can never oversell a balance or open two orders
with one client id; a batch of sells is one script too.

Modules: ``exchange`` (the PaperExchange class), ``scripts`` (the Lua), ``stored`` (the
stored-order JSON and its decoding), ``rules`` (Kraken's pair rules, generic rules of
other symbols), ``units`` (exact integer money), ``faults`` (PAPER_FAULTS, chaos runs).

Redis layout. One paper account per deployment; every key is ``keys.paper(name)`` =
``<MM_KEY_PREFIX>paper:{paper}:<name>``. The braces are a literal Redis Cluster hash
tag, the same for every key of the account, so all of them live in one slot: every
script and every MULTI of the exchange touches that one slot, and a balance check and
the lock it guards stay one atomic step on a cluster too. (The cost: the account is
one slot, on one node; its load does not spread. Per-symbol tags would spread it but
would split the balances, which symbols share, across slots.) If MM_KEY_PREFIX itself
holds a ``{tag}``, that tag wins; it is the same for every key, so one slot still.

=================  ======  ============================================================
name               type    contents
=================  ======  ============================================================
``orders``         hash    order id -> JSON order (trading/paper/stored.py); every order,
                           until its session's state is removed (``forget``, retention)
``open_clients``   hash    client id -> order id, OPEN orders only (uniqueness + index)
``clients``        hash    client id -> most recent order id placed with it
``free``           hash    asset -> free balance, integer units of 1e-8
``locked``         hash    asset -> amount locked by open sells, integer units of 1e-8
``prices``         hash    symbol -> "LAST BID ASK" (decimal strings)
``bids``           hash    symbol -> best bid, integer units of 1e-18 (post-only check)
``ticks``          hash    symbol -> tick of an unlisted symbol (first price wins)
``seen_fills``     set     fill ids (``<sid>/<fill id>``) already applied by observe_fill,
                           until their session's state is removed (``forget``)
``seq``            string  counter ordering the orders
``init``           string  set once the starting balances were applied
``faults``         hash    PAPER_FAULTS kind -> faults injected (chaos runs only)
=================  ======  ============================================================

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

from trading.paper.exchange import PaperExchange
from trading.paper.faults import PaperFaults
from trading.paper.rules import KRAKEN_USD_PAIRS, PairRules, split_symbol
from trading.paper.units import from_units, to_units

__all__ = [
    "KRAKEN_USD_PAIRS",
    "PairRules",
    "PaperExchange",
    "PaperFaults",
    "from_units",
    "split_symbol",
    "to_units",
]
