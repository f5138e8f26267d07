"""The run's summary table and the JSON record of a failing run."""

from __future__ import annotations

import json
from pathlib import Path

from bench.chaos.run import RunResult

FAILURES = Path(__file__).resolve().parents[2] / ".chaos"  # gitignored


def summary(result: RunResult) -> str:
    rows = [("events", str(result.events))]
    for kind, n in sorted(result.faults.items()):
        rows.append((f"faults: {kind}", str(n)))
    rows.append(("violations", str(len(result.violations))))
    rows.append(("time", f"{result.seconds:.0f} s"))
    width = max(len(k) for k, _ in rows)
    value_width = max(5, *(len(v) for _, v in rows))
    line = f"+-{'-' * width}-+-{'-' * value_width}-+"
    out = [line, f"| {'what':<{width}} | {'count':>{value_width}} |", line]
    out += [f"| {k:<{width}} | {v:>{value_width}} |" for k, v in rows]
    out.append(line)
    return "\n".join(out)


def save_failure(result: RunResult, shortest: RunResult | None) -> Path:
    FAILURES.mkdir(exist_ok=True)
    path = FAILURES / f"seed-{result.config.seed}.json"

    def as_dict(r: RunResult) -> dict[str, object]:
        return {
            "command": r.config.command(),
            "config": {k: getattr(r.config, k) for k in r.config.__slots__},
            "violations": [v.as_dict() for v in r.violations],
            "faults": dict(r.faults),
            "fault_log": r.fault_log,
            "events": r.events,
            "traffic": r.traffic,
            "seconds": round(r.seconds, 1),
            "workdir (worker logs, kept)": r.workdir,
        }

    record = {"run": as_dict(result), "shortest": as_dict(shortest) if shortest else None}
    path.write_text(json.dumps(record, indent=2, default=str))
    return path
