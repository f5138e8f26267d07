"""`fills` and `orders` hash-partitioned by session_id (`mmops db upgrade --partitions N`).

PostgreSQL's declarative HASH partitioning, N partitions `<table>_h<N>_<i>`. session_id is
also the distribution column a Citus cluster would use (`create_distributed_table(...,
'session_id')`): a session's rows stay together, and every query of the migrator names
its session.

A partitioned table's primary key and unique constraints must contain the partition key
(Citus's rule is the same). The fills UNIQUE key already starts with session_id; the
primary keys become (id, session_id) under their old names (`fills_pkey`, `orders_pkey`),
id first so a lookup by id alone still uses them. Writers that name a conflict target
use `ON CONFLICT ON CONSTRAINT orders_pkey`, which means the same on both layouts. Ids
stay unique per session by the database and across sessions by the migrator, which
stores an id that another session already used as `<session>:<id>`.

This is a layout a deployment chooses, not a schema version: it is not a numbered
migration. Later migrations apply to either layout (ALTER TABLE on a partitioned table
reaches every partition), except a unique index without session_id, which PostgreSQL
refuses on a partitioned table. The change copies the rows into the new table in one
transaction, holding an ACCESS EXCLUSIVE lock on the table: writers wait, then fail and
retry (a migrator's transaction rolls back and is redone), nothing is lost. Running it
again with the same N changes nothing; another N re-partitions.
"""

from __future__ import annotations

import asyncpg

TABLES = ("fills", "orders")
PARTITION_KEY = "session_id"
NEW = "mm_partitioned_{table}"


class PartitioningError(ValueError):
    """The tables cannot be partitioned as asked; str() says why in one line."""


async def layout(conn: asyncpg.Connection, table: str) -> int:
    """How many hash partitions by session_id `table` has; 0 when it is a plain table."""
    row = await conn.fetchrow(
        """SELECT pt.partstrat::text AS partstrat, array_agg(a.attname::text) AS columns,
                  (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = pt.partrelid)::int AS n
           FROM pg_partitioned_table pt
           JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = ANY(pt.partattrs)
           WHERE pt.partrelid = to_regclass($1)
           GROUP BY pt.partstrat, pt.partrelid""",
        table,
    )
    if row is None:
        if await conn.fetchval("SELECT to_regclass($1)", table) is None:
            raise PartitioningError(f"{table}: no such table (run mmops db upgrade first)")
        return 0
    if row["partstrat"] != "h" or row["columns"] != [PARTITION_KEY]:
        raise PartitioningError(f"{table}: partitioned otherwise than by HASH (session_id)")
    return int(row["n"])


async def partition(conn: asyncpg.Connection, partitions: int) -> list[str]:
    """Make `fills` and `orders` hash-partitioned into `partitions`; what was done, per table.

    The caller holds the schema's advisory lock (storage.schema.partition)."""
    if partitions < 1:
        raise PartitioningError(f"--partitions: expected a number >= 1, got {partitions}")
    done: list[str] = []
    async with conn.transaction():
        for table in TABLES:
            before = await layout(conn, table)
            if before == partitions:
                done.append(f"{table}: already hash-partitioned by session_id into {partitions}")
                continue
            rows = await _rebuild(conn, table, partitions)
            was = f"{before} partitions" if before else "a plain table"
            done.append(
                f"{table}: hash-partitioned by session_id into {partitions} ({rows} rows moved; "
                f"was {was})"
            )
    return done


async def _rebuild(conn: asyncpg.Connection, table: str, partitions: int) -> int:
    """Copy `table` into a new partitioned table that takes its name, keys and indexes."""
    new = NEW.format(table=table)
    await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    keys = await conn.fetch(
        """SELECT c.conname::text AS conname, c.contype::text AS contype,
                  array_agg(a.attname::text ORDER BY k.ord) AS columns
           FROM pg_constraint c
           CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
           WHERE c.conrelid = to_regclass($1) AND c.contype IN ('p', 'u')
           GROUP BY c.conname, c.contype ORDER BY c.contype, c.conname""",
        table,
    )
    indexes = await conn.fetch(
        """SELECT pg_get_indexdef(i.indexrelid) AS definition FROM pg_index i
           WHERE i.indrelid = to_regclass($1)
             AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
           ORDER BY i.indexrelid""",
        table,
    )
    await conn.execute(
        f"CREATE TABLE {new} (LIKE {table} INCLUDING ALL EXCLUDING INDEXES)"
        f" PARTITION BY HASH ({PARTITION_KEY})"
    )
    for remainder in range(partitions):
        await conn.execute(
            f"CREATE TABLE {table}_h{partitions}_{remainder} PARTITION OF {new}"
            f" FOR VALUES WITH (MODULUS {partitions}, REMAINDER {remainder})"
        )
    status = await conn.execute(f"INSERT INTO {new} SELECT * FROM {table}")
    await conn.execute(f"DROP TABLE {table}")
    await conn.execute(f"ALTER TABLE {new} RENAME TO {table}")
    for key in keys:
        columns = list(key["columns"])
        if PARTITION_KEY not in columns:
            columns.append(PARTITION_KEY)
        kind = "PRIMARY KEY" if key["contype"] == "p" else "UNIQUE"
        await conn.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {_ident(key['conname'])} {kind}"
            f" ({', '.join(_ident(c) for c in columns)})"
        )
    for index in indexes:  # the old table's definitions name the same (schema.)table
        definition = str(index["definition"]).replace(" ON ONLY ", " ON ", 1)
        await conn.execute(definition)
    return int(status.rsplit(" ", 1)[-1])


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
