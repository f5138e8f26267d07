"""`mmops db upgrade|version`: apply the versioned SQL migrations."""

from __future__ import annotations

import argparse

from base.settings import Settings
from mmops import runner
from storage import postgres, schema


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = db_sub.add_parser(
        "upgrade", help="apply pending migrations (idempotent, safe concurrently)"
    )
    up.set_defaults(func=lambda a: runner.run(_upgrade))
    version = db_sub.add_parser("version", help="print the schema version")
    version.set_defaults(func=lambda a: runner.run(_version))


async def _upgrade(settings: Settings) -> int:
    conn = await postgres.connect(settings.database_url)
    try:
        applied = await schema.upgrade(conn)
        version = await schema.current_version(conn)
    finally:
        await conn.close()
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    print(f"schema at version {version}")
    return 0


async def _version(settings: Settings) -> int:
    conn = await postgres.connect(settings.database_url)
    try:
        print(await schema.current_version(conn))
    finally:
        await conn.close()
    return 0
