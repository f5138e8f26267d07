"""The servers and worker processes a chaos run owns: its redis-server (AOF, fsync always),
its PostgreSQL database, and the `mmops` workers as real subprocesses it kills and restarts."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.chaos.config import ChaosConfig
from storage.servers import RedisProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN_URL = os.environ.get("CHAOS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def own_redis(directory: Path) -> RedisProcess:
    """A redis-server on a free port with the append-only file on and `appendfsync always`:
    a write it acknowledged survives a kill -9 of the server."""
    return RedisProcess(free_port(), directory, appendonly=True).start()


def restart_redis(server: RedisProcess, *, hard: bool) -> None:
    if hard:
        server.kill()
    else:
        server.stop()
    server.start(timeout=30.0)


def database_url(name: str, base: str = ADMIN_URL) -> str:
    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(seed: int) -> str:
    """A fresh database of the run's own, uniquely named; its URL."""
    name = f"chaos_{seed}_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class Worker:
    name: str  # coverage-1, sweeper-2, migrator-1: also its CONSUMER_NAME
    command: str  # coverage | sweeper | migrator
    process: subprocess.Popen[bytes] | None = None
    crash_point: str = ""
    terminated: bool = False  # SIGTERM sent by the run (its exit is then expected, code 0)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class Workers:
    config: ChaosConfig
    env: dict[str, str]
    logs: Path
    pool: list[Worker] = field(default_factory=list)
    bad_exits: list[tuple[str, int]] = field(default_factory=list)  # SIGTERM, exit code not 0

    def __post_init__(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pool = [Worker(f"coverage-{i + 1}", "coverage") for i in range(self.config.coverage)]
        self.pool += [Worker(f"sweeper-{i + 1}", "sweeper") for i in range(self.config.sweepers)]
        self.pool.append(Worker("migrator-1", "migrator"))

    def start(self, worker: Worker, crash_point: str = "") -> None:
        env = {**self.env, "CONSUMER_NAME": worker.name}
        if crash_point:
            env["MMOPS_CRASH_POINT"] = crash_point
        worker.crash_point = crash_point
        worker.terminated = False
        with (self.logs / f"{worker.name}.log").open("ab") as log:
            worker.process = subprocess.Popen(
                [sys.executable, "-m", "mmops", worker.command],
                env=env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def start_all(self) -> None:
        for worker in self.pool:
            self.start(worker)

    def kill(self, worker: Worker) -> None:
        if worker.process is not None and worker.alive:
            worker.process.send_signal(signal.SIGKILL)
            worker.process.wait(10)

    def terminate(self, worker: Worker, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait: a worker finishes its batch and exits 0 (contract §4.4)."""
        if worker.process is None or not worker.alive:
            return None
        worker.terminated = True
        worker.process.send_signal(signal.SIGTERM)
        try:
            code = worker.process.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            code = worker.process.wait(10)
            self.bad_exits.append((worker.name, -999))
            return code
        if code != 0:
            self.bad_exits.append((worker.name, code))
        return code

    def dead(self) -> list[Worker]:
        return [w for w in self.pool if w.process is not None and not w.alive]

    def stop_all(self) -> None:
        for worker in self.pool:
            if worker.alive and worker.process is not None:
                worker.terminated = True
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for worker in self.pool:
            if worker.process is None:
                continue
            try:
                code = worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(10)
                self.bad_exits.append((worker.name, -999))
                continue
            if worker.terminated and code != 0:
                self.bad_exits.append((worker.name, code))


def run_sweep_once(env: dict[str, str], log: Path) -> int:
    """The final sweep: `mmops sweep --once`."""
    with log.open("ab") as out:
        done = subprocess.run(
            [sys.executable, "-m", "mmops", "sweep", "--once"],
            env={**env, "CONSUMER_NAME": "final-sweep"},
            cwd=ROOT,
            stdout=out,
            stderr=out,
            timeout=120,
            check=False,
        )
    return done.returncode
