"""The `mmops` command line as a user runs it: help for every command, and `emit`."""

from __future__ import annotations

import argparse
import subprocess

import pytest
import redis.asyncio as aioredis

from mmops.cli import main, parser
from storage.keys import Keys
from tests.conftest import MMOPS

EMIT = [
    "type=fill",
    "session_id=s-42",
    "fill_id=f-1",
    "order_id=o-7",
    "symbol=BTC/USD",
    "side=buy",
    "price=64000.5",
    "quantity=0.010",
    "fee=0.16",
    "ts=1763700000000",
]


def commands(top: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every (sub)command path of the parser, e.g. ('db', 'upgrade')."""
    found: list[tuple[str, ...]] = []
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*path, name))
                found += commands(sub, (*path, name))
    return found


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MMOPS, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_mmops_help_exits_0(env: dict[str, str]) -> None:
    done = run(env, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: mmops")
    for command in ("coverage", "emit", "db"):
        assert command in done.stdout


def test_a_subcommand_help_exits_0_through_the_real_entry_point(env: dict[str, str]) -> None:
    done = run(env, "db", "upgrade", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: mmops db upgrade")


def test_help_of_every_subcommand_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    paths = commands(parser())
    assert {("coverage",), ("emit",), ("db", "upgrade")} <= set(paths)
    for path in paths:
        with pytest.raises(SystemExit) as caught:
            main([*path, "--help"])
        assert caught.value.code == 0, path
        out, err = capsys.readouterr()
        assert out.startswith(f"usage: mmops {' '.join(path)}"), (path, out)
        assert err == ""


def test_no_command_is_a_usage_error(env: dict[str, str]) -> None:
    done = run(env)
    assert done.returncode == 2
    assert "usage: mmops" in done.stderr
    assert "Traceback" not in done.stderr


async def test_emit_prints_the_entry_id_and_the_entry_is_in_the_stream(
    env: dict[str, str],
    redis: aioredis.Redis,
    keys: Keys,
) -> None:
    done = run(env, "emit", *EMIT)
    assert done.returncode == 0, done.stderr
    entry_id = done.stdout.strip()
    assert entry_id.count("-") == 1 and all(part.isdigit() for part in entry_id.split("-"))
    [(found_id, fields)] = await redis.xrange(keys.stream)
    assert found_id.decode() == entry_id
    expected = dict(item.split("=", 1) for item in EMIT)
    assert {k.decode(): v.decode() for k, v in fields.items()} == expected


async def test_emit_of_an_invalid_event_exits_2_with_one_line_and_adds_nothing(
    env: dict[str, str],
    redis: aioredis.Redis,
    keys: Keys,
) -> None:
    args = [item if not item.startswith("price=") else "price=NaN" for item in EMIT]
    done = run(env, "emit", *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "price: " in lines[0] and "NaN" in lines[0]
    assert done.stdout == ""
    assert not await redis.exists(keys.stream)


async def test_emit_rejects_an_argument_without_equals(
    env: dict[str, str],
    redis: aioredis.Redis,
    keys: Keys,
) -> None:
    done = run(env, "emit", *EMIT, "oops")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["mmops emit: expected KEY=VALUE, got 'oops'"]
    assert not await redis.exists(keys.stream)


def test_emit_with_redis_unreachable_names_the_url_in_one_line(env: dict[str, str]) -> None:
    done = run({**env, "REDIS_URL": "redis://mm:s3cret@127.0.0.1:1/0"}, "emit", *EMIT)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "redis://mm:***@127.0.0.1:1/0" in lines[0]
    assert "s3cret" not in done.stderr
