"""One `mmops <command>` process of a test, its output in a file (no pipe to drain), and
the launcher a test's `start` fixture builds on: every process started is killed after
the test if it is still running."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tests.conftest import MMOPS, wait_for


class WorkerProcess:
    def __init__(self, command: str, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._out: IO[bytes] = log.open("wb")
        self.proc = subprocess.Popen(
            [*MMOPS, command, *args], env=env, stdout=self._out, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def exited(self, within: float = 30.0) -> int:
        async def done() -> bool:
            return self.proc.poll() is not None

        await wait_for(done, timeout=within)
        return self.proc.returncode

    async def stop(self) -> int:
        """SIGTERM, then its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.exited()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


Launch = Callable[..., WorkerProcess]


@contextmanager
def launcher(command: str, env: dict[str, str], logs: Path, **defaults: str) -> Iterator[Launch]:
    """`launch(name, *args, **variables)` starts `mmops <command>` as consumer `name`."""
    started: list[WorkerProcess] = []

    def launch(name: str, *args: str, **variables: str) -> WorkerProcess:
        variables = {**env, "CONSUMER_NAME": name, **defaults, **variables}
        log = logs / f"{name}-{len(started)}.log"
        started.append(WorkerProcess(command, variables, log, *args))
        return started[-1]

    try:
        yield launch
    finally:
        for process in started:
            process.close()
