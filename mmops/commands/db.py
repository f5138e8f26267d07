"""`mmops db upgrade|version`: apply the versioned SQL migrations."""

from __future__ import annotations

import argparse
import sys

from base.settings import Settings
from mmops import runner
from mmops.commands.arguments import positive_int
from storage import postgres, schema
from storage.partitioning import PartitioningError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser(
        "upgrade",
        help="apply pending migrations (idempotent, safe concurrently)",
        description="Apply pending migrations. With --partitions N, also make fills and orders "
        "hash-partitioned by session_id into N partitions (existing rows are moved; their "
        "primary keys become (id, session_id)); again with the same N changes nothing.",
    )
    up.add_argument(
        "--partitions",
        type=positive_int,
        metavar="N",
        help="hash-partition fills and orders by session_id into N partitions",
    )
    up.set_defaults(func=lambda a: runner.run(lambda s: _upgrade(s, a.partitions)))
    version = db_sub.add_parser("version", help="print the schema version")
    version.set_defaults(func=lambda a: runner.run(_version))


async def _upgrade(settings: Settings, partitions: int | None = None) -> int:
    conn = await postgres.connect(settings.database_url)
    try:
        for migration in await schema.upgrade(conn):
            print(f"applied {migration.version:04d}_{migration.name}")
        print(f"schema at version {await schema.current_version(conn)}")
        if partitions is not None:
            for line in await schema.partition(conn, partitions):
                print(line)
    except PartitioningError as exc:
        print(f"mmops db upgrade: {exc}", file=sys.stderr)
        return 2
    finally:
        await conn.close()
    return 0


async def _version(settings: Settings) -> int:
    conn = await postgres.connect(settings.database_url)
    try:
        print(await schema.current_version(conn))
    finally:
        await conn.close()
    return 0
