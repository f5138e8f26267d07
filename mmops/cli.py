"""`mmops` command line: one module per command group under mmops/commands/."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback
from collections.abc import Sequence

import asyncpg
from redis.exceptions import RedisError

from base import logs
from base.logs import one_line
from base.settings import SettingsError, env_secrets
from storage.redis import ServerUnreachable

COMMAND_MODULES = (
    "mmops.commands.run",
    "mmops.commands.emit",
    "mmops.commands.db",
    "mmops.commands.migrate",
    "mmops.commands.report",
    "mmops.commands.sweep",
    "mmops.commands.simulate",
    "mmops.commands.demo",
    "mmops.commands.replay",
    "mmops.commands.status",
    "mmops.commands.dead",
)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="mmops",
        description="Back office of a multi-pair spot market maker: "
        "take-profit coverage, sweeper, migration.",
        epilog="Settings come from the environment (see README: Settings).",
    )
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a command group not built yet
            raise
        module.register(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # as a program: a SIGTERM before the workers' own handlers exist stops cleanly
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logs.protect(env_secrets())  # before anything can fail: no message shows a secret
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SettingsError, ServerUnreachable) as exc:
        print(f"mmops: {one_line(exc, 1000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (asyncpg.PostgresError, RedisError) as exc:
        first = one_line(exc)
        print(f"mmops: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: its traceback helps, but it must not show a secret either
        text = "".join(traceback.format_exception(exc))
        print(logs.redact(text), end="", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
