"""The parameters of one chaos run: everything that makes it reproducible is here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChaosConfig:
    seed: int = 1
    duration: float = 30.0  # seconds of traffic (then the sessions end and close)
    rate: float = 40.0  # trader steps per second (each one to a few entries)
    sessions: int = 6  # sessions live at once
    session_orders: tuple[int, int] = (4, 30)  # buy orders per session (range)
    pairs: int = 6
    shards: int = 1
    coverage: int = 3  # coverage processes
    sweepers: int = 2
    fault_every: float = 2.0  # mean seconds between two faults
    faults: bool = True
    paper_faults: str = (
        "rate_limit=0.02,place_5xx=0.02,place_timeout=0.01,lost_response=0.02,"
        "post_only=0.01,cancel_5xx=0.02,fetch_5xx=0.01"
    )
    invalid_share: float = 0.01  # of the trader's steps, an invalid entry
    after_end: float = 6.0  # seconds of TP fills once every session ended
    quiesce_timeout: float = 90.0

    def replace(self, **changes: object) -> ChaosConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def command(self) -> str:
        """The one command that replays this run."""
        args = [f"--seed {self.seed}", f"--duration {self.duration:g}", f"--rate {self.rate:g}"]
        args += [f"--sessions {self.sessions}", f"--pairs {self.pairs}"]
        args += [f"--shards {self.shards}", f"--coverage {self.coverage}"]
        args += [f"--fault-every {self.fault_every:g}"]
        if not self.faults:
            args.append("--no-faults")
        return ".venv/bin/python -m bench.chaos " + " ".join(args)


SMALL = ChaosConfig()
FULL = ChaosConfig(duration=720.0, rate=60.0, sessions=12, pairs=8, fault_every=2.5)
