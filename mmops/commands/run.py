"""`mmops up | coverage | migrator | sweeper`: run workers until SIGTERM."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from base import logs
from base.settings import Settings
from mmops import metrics_http, runner
from mmops.app import App, run_until_stopped
from workers.groups import GROUPS, runtimes_for

log = logs.get("mmops.run")
WORKERS = ("coverage", "migrator", "sweeper")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = sub.add_parser("up", help="run every worker (coverage, migrator, sweeper) in one process")
    up.add_argument(
        "--embedded",
        action="store_true",
        help="start embedded Redis/PostgreSQL when REDIS_URL/DATABASE_URL do not answer",
    )
    up.set_defaults(func=lambda a: _run(WORKERS, embedded=a.embedded))
    for name, text in (
        ("coverage", "place a take-profit for every buy fill (consumer group 'coverage')"),
        ("migrator", "persist finished sessions to PostgreSQL (consumer group 'migrator')"),
        ("sweeper", "the safety-net loop: coverage, repricing, reconciliation, loss limit"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "--drain", action="store_true", help="process what is in the stream, then exit"
        )
        cmd.set_defaults(func=lambda a, n=name: _run((n,), until_drained=a.drain))


def _run(names: tuple[str, ...], *, embedded: bool = False, until_drained: bool = False) -> int:
    overrides: dict[str, object] = {}
    servers = None
    if embedded:
        from storage.servers import ensure_servers

        probe = Settings.from_env()
        servers = ensure_servers(probe.redis_url, probe.database_url, Path(".mmops"))
        overrides = {"redis_url": servers.redis_url, "database_url": servers.database_url}
    try:
        runner.run(lambda s: serve(s, names, until_drained=until_drained), **overrides)
    finally:
        if servers is not None:
            servers.close()
    return 0


GC_THRESHOLDS = (10_000, 50, 1_000)


def quiet_garbage_collector() -> None:
    """A worker allocates a few objects per entry, none in reference cycles: what was built
    at start is frozen out of the cyclic collector's sight and it runs far less often
    (bench/coverage.py --profile: the collector took 17-28 % of a worker's CPU at the
    defaults, its oldest-generation passes 15-42 ms each: the latency tail)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(settings: Settings, names: tuple[str, ...], *, until_drained: bool = False) -> None:
    # the metrics port first: a port in use stops the process before it connects anywhere
    server = await metrics_http.serve(settings)
    try:
        app = await App.open(settings)
    except BaseException:
        await metrics_http.close(server)
        raise
    app.install_signal_handlers()
    closers: list[Callable[[], Awaitable[object]]] = []
    try:
        tasks = await build(app, names, until_drained=until_drained, closers=closers)
        quiet_garbage_collector()
        log.info(
            "started %s as %s",
            " ".join(names),
            settings.consumer,
            extra={"stream": ",".join(app.keys.streams)},
        )
        await run_until_stopped(app, tasks)
    finally:
        for close in closers:
            await close()
        await metrics_http.close(server)
        await app.close()
        log.info("stopped")


async def build(
    app: App,
    names: tuple[str, ...],
    *,
    until_drained: bool = False,
    closers: list[Callable[[], Awaitable[object]]],
) -> list[Callable[[], Awaitable[object]]]:
    """The loops of the named workers, sharing one App (connections, exchange, positions).

    The stream workers come from the registry of consumer groups (workers/groups.py),
    each with its own configuration and a runtime per shard of the input stream; the
    sweeper brings the alerts webhook group along."""
    groups: list[str] = [name for name in ("coverage", "migrator") if name in names]
    if "sweeper" in names and GROUPS["webhook"].enabled(app.settings):
        groups.append("webhook")
    tasks: list[Callable[[], Awaitable[object]]] = []
    for name in groups:  # one runtime per shard of the input stream (workers/groups.py)
        runtimes = await runtimes_for(name, app, app.settings.consumer)
        closers.append(runtimes.aclose)
        task: Callable[[], Awaitable[object]] = partial(runtimes.run, until_drained=until_drained)
        # a handler's periodic work beside its consumer (the migrator's sync of ended sessions)
        periodic = getattr(runtimes.runtimes[0].handler, "keep_in_step", None)
        if periodic is not None and until_drained:
            task = _then(task, partial(periodic, app.stop, once=True))
        elif periodic is not None:
            tasks.append(partial(periodic, app.stop))
        tasks.append(task)
    if "sweeper" in names:
        from workers.sweeper import Sweeper

        sweeper = await Sweeper.create(app)
        closers.append(sweeper.close)
        tasks.append(sweeper.run_once if until_drained else sweeper.run)
    return tasks


def _then(
    first: Callable[[], Awaitable[object]], second: Callable[[], Awaitable[object]]
) -> Callable[[], Awaitable[object]]:
    async def both() -> None:
        await first()
        await second()

    return both
