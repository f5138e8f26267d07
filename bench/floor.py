"""The floor under the coverage benchmark: a bare XREADGROUP + XACK loop, nothing else.

Run by bench/coverage.py in its own process, over the same kind of stream of fills:
redis-py's asyncio client (hiredis parsing) on uvloop, COUNT 100, each batch acked with
one XACK. Once it has acked `--count` entries it asks Redis for its clock (TIME) and
prints {"acked": n, "end_us": ..., "cpu_s": ...} as one JSON line, then exits.

    python -m bench.floor --redis-url URL --stream S --group G --consumer C --count N
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any, cast

import redis.asyncio as aioredis
import uvloop

COUNT = 100
Reply = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


def start(
    redis_url: str, stream: str, group: str, consumer: str, count: int, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """This module as a process, its report on a pipe (`report`)."""
    command = [
        *("--redis-url", redis_url, "--stream", stream, "--group", group),
        *("--consumer", consumer, "--count", str(count)),
    ]
    return subprocess.Popen(
        [sys.executable, "-m", "bench.floor", *command], env=env, stdout=subprocess.PIPE
    )


def report(proc: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    """Its JSON line, once it is done."""
    out, _ = proc.communicate(None, timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"the floor process exited with {proc.returncode}")
    found: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return found


async def consume(args: argparse.Namespace) -> dict[str, float]:
    redis = aioredis.Redis.from_url(args.redis_url)
    acked = 0
    try:  # its own pending entries first (none here): this registers it as a consumer
        await redis.xreadgroup(args.group, args.consumer, {args.stream: "0"}, count=COUNT)
        while acked < args.count:
            reply = cast(
                Reply,
                await redis.xreadgroup(
                    args.group, args.consumer, {args.stream: ">"}, count=COUNT, block=1000
                ),
            )
            for _, entries in reply:
                ids = [mid for mid, _ in entries]
                if ids:
                    await redis.xack(args.stream, args.group, *ids)
                    acked += len(ids)
        seconds, micros = await redis.time()
    finally:
        await redis.aclose()
    return {"acked": acked, "end_us": seconds * 1_000_000 + micros, "cpu_s": time.process_time()}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(consume(args))), flush=True)


if __name__ == "__main__":
    main()
