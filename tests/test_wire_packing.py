"""storage/wire.py packs every command as redis-py's own hiredis serializer does."""

from __future__ import annotations

from typing import Any

import pytest
from redis.connection import HiredisRespSerializer
from redis.exceptions import DataError

from storage.wire import HiredisConnection


class _Buffer(bytearray):
    pass


CASES: list[tuple[Any, ...]] = [
    ("EVALSHA", "abc", 2, "k1", "k2", b"\x00\xff", -1, 2.5),
    (b"CLIENT SETNAME", "worker"),
    ("SET", bytearray(b"ab"), memoryview(b"cd")),
    ("SET", memoryview(bytes(range(9)))[::2], "x"),
    ("SET", _Buffer(b"zz"), "q"),
    ("SET", "é", b""),
]


@pytest.mark.parametrize("args", CASES)
def test_packs_as_redis_py(args: tuple[Any, ...]) -> None:
    packer = HiredisConnection.pack_command
    assert packer(None, *args) == HiredisRespSerializer().pack(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [None, object(), True])
def test_what_nothing_packs_is_a_data_error(bad: object) -> None:
    with pytest.raises(DataError):
        HiredisConnection.pack_command(None, "SET", bad)  # type: ignore[arg-type]
