"""No secret in any output (docs/contract.md §5): the redactor on every log line and CLI
error, and real `mmops` runs where each secret is exercised, error paths included."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from base import logs
from base.settings import Settings
from storage.keys import Keys
from tests.conftest import MMOPS, wait_for
from tests.fake_kraken import FakeKraken
from tests.fake_kraken_data import Fault
from tests.helpers import fill, now_ms

API_KEY = "K3yForTheLeakTest0123456789"
API_SECRET = base64.b64encode(b"leak-test-secret-bytes-0123456789!").decode()
WEBHOOK_TOKEN = "wHt0kenLeakTest987"
WEBHOOK_PATH = f"/services/T0LEAKTEAM/B0LEAKBOT/{WEBHOOK_TOKEN}"
PG_PW = "pgLeakPw5678"
REDIS_PW = "redisLeakPw1234"
API_URL_PW = "apiUrlLeakPw42"
SECRETS = (API_KEY, API_SECRET, WEBHOOK_TOKEN, WEBHOOK_PATH, PG_PW, REDIS_PW, API_URL_PW)


def leaks(*texts: str) -> list[str]:
    joined = "\n".join(texts)
    return [s for s in SECRETS if s in joined]


@pytest.fixture(autouse=True)
def _fresh_redactor() -> object:
    yield
    logs.REDACT.clear()


# --- the redactor ----------------------------------------------------------------------
def test_every_form_of_a_secret_is_masked_in_a_log_line() -> None:
    tricky = 'pa"ss\\word\u00e9'  # JSON and repr() escape it differently
    logs.protect([API_KEY, tricky])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    log = logging.getLogger("mmops.test.secrets")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("message %s", API_KEY, extra={"detail": f"key={API_KEY}", "pw": tricky})
        log.warning("repr %r and json %s", tricky, tricky)
        try:
            raise RuntimeError(f"exchange said {API_KEY} / {tricky}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert API_KEY not in out and "pa" + '\\"ss' not in out and 'pa"ss' not in out
    assert out.count(logs.MASK) >= 6
    assert len(out.splitlines()) == 3


def test_one_line_and_redact_mask_registered_secrets() -> None:
    logs.protect([REDIS_PW])
    assert logs.redact(f"redis://u:{REDIS_PW}@h") == "redis://u:***@h"
    assert logs.one_line(ValueError(f"bad {REDIS_PW}\nsecond line")) == "bad ***"


def test_the_longest_secret_is_masked_whole() -> None:
    logs.protect([WEBHOOK_TOKEN, WEBHOOK_PATH])
    assert (
        logs.redact(f"POST https://hooks.example{WEBHOOK_PATH}") == "POST https://hooks.example***"
    )


# --- real runs -------------------------------------------------------------------------
def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MMOPS, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def secret_env(env: dict[str, str]) -> dict[str, str]:
    """The test's environment, every secret set, the most verbose logs."""
    return {
        **env,
        "LOG_LEVEL": "TRACE",
        "EXCHANGE_API_KEY": API_KEY,
        "EXCHANGE_API_SECRET": API_SECRET,
        "ALERT_WEBHOOK_URL": f"http://127.0.0.1:1{WEBHOOK_PATH}",
    }


@pytest.mark.parametrize(
    ("changes", "command"),
    [
        ({"REDIS_URL": f"redis://mm:{REDIS_PW}@127.0.0.1:1/0"}, ("coverage",)),
        ({"REDIS_URL": f"redis://mm:{REDIS_PW}@127.0.0.1:1/0"}, ("status",)),
        (
            {"REDIS_URL": f"redis://mm:{REDIS_PW}@127.0.0.1:1/0"},
            ("emit", "type=session_ended", "session_id=s-1", "ts=1"),
        ),
        ({"REDIS_URL": f"redis://:{REDIS_PW}@127.0.0.1:1/0"}, ("up",)),
        ({"DATABASE_URL": f"postgresql://mm:{PG_PW}@127.0.0.1:1/mm"}, ("db", "upgrade")),
        ({"DATABASE_URL": f"postgresql://mm@127.0.0.1:1/mm?password={PG_PW}"}, ("report",)),
        ({"DATABASE_URL": f"postgresql://mm:{PG_PW}@127.0.0.1:1/mm"}, ("migrator", "--drain")),
        ({"ALERT_WEBHOOK_URL": f"127.0.0.1{WEBHOOK_PATH}"}, ("sweeper",)),
        ({"ALERT_WEBHOOK_URL": f"ftp://127.0.0.1{WEBHOOK_PATH}"}, ("up",)),
        ({"EXCHANGE": "krakn"}, ("coverage",)),
        ({"EXCHANGE": "kraken", "EXCHANGE_API_URL": f"ftp://u:{API_URL_PW}@h"}, ("coverage",)),
        ({"DRY_RUN": "maybe"}, ("coverage",)),
    ],
)
def test_error_paths_show_no_secret(
    secret_env: dict[str, str], changes: dict[str, str], command: tuple[str, ...]
) -> None:
    """Unreachable servers, bad settings: one line, and no secret in it."""
    done = run({**secret_env, **changes}, *command)
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    # (LOG_LEVEL=TRACE: log lines may come before it) the error is one line, the last
    assert lines[-1].startswith("mmops: "), done.stderr
    assert all(line.startswith("{") for line in lines[:-1]), done.stderr
    assert not leaks(done.stdout, done.stderr)


@dataclass
class WebhookSink:
    """A chat webhook that refuses with its own URL (the token) in the body, as some do."""

    posts: list[bytes] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.posts.append(await request.read())
            status = 500 if len(self.posts) % 2 else 404
            return web.Response(status=status, text=f"no such hook {request.path_qs}")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://hook:{WEBHOOK_TOKEN}x@{host}:{port}{WEBHOOK_PATH}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def sink() -> AsyncIterator[WebhookSink]:
    server = WebhookSink()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def redis_user(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[str]:
    """REDIS_URL with an ACL user and password (REDIS_PW) made for this test only."""
    user = f"mmops-leak-{uuid.uuid4().hex[:8]}"
    await redis.acl_setuser(
        user, enabled=True, passwords=[f"+{REDIS_PW}"], keys=["*"], channels=["*"],
        commands=["+@all"],
    )  # fmt: skip
    try:
        scheme, rest = settings.redis_url.split("://", 1)
        yield f"{scheme}://{user}:{REDIS_PW}@{rest.split('@')[-1]}"
    finally:
        await redis.acl_deluser(user)


@pytest.fixture
async def echoing_kraken() -> AsyncIterator[FakeKraken]:
    async with FakeKraken(api_key=API_KEY, api_secret=API_SECRET) as server:
        yield server


async def test_a_run_that_exercises_every_secret_shows_none(
    secret_env: dict[str, str],
    settings: Settings,
    keys: Keys,
    redis: aioredis.Redis,
    sink: WebhookSink,
    echoing_kraken: FakeKraken,
    redis_user: str,
) -> None:
    """`mmops up` against an exchange that echoes the credentials in its errors, a webhook
    that echoes its URL, Redis and PostgreSQL reached with passwords; every output is checked:
    stdout, stderr, mm:alerts, mm:takeprofits, mm:dead and what the chat received."""
    everything = (
        f"{API_KEY} {API_SECRET} {WEBHOOK_PATH} {PG_PW} pw={PG_PW} url={sink.url} {redis_user}"
    )
    for _ in range(6):
        echoing_kraken.inject("AddOrder", Fault.http(500, f"<html>bad request {everything}</html>"))
        echoing_kraken.inject(
            "AddOrder", Fault.kraken_error(f"EGeneral:Internal error {everything}")
        )
    env = {
        **secret_env,
        "EXCHANGE": "kraken",
        "EXCHANGE_API_URL": echoing_kraken.url,
        "ALERT_WEBHOOK_URL": sink.url,
        "DATABASE_URL": settings.database_url + f"&password={PG_PW}",
        "REDIS_URL": redis_user,
        "TP_PENDING_SETTLE_MS": "80000",
        "SETTLEMENT_INTERVAL_MINUTES": "0.01",
        "CONSUMER_NAME": "leak-test",
    }
    process = await asyncio.create_subprocess_exec(
        *MMOPS, "up", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out = asyncio.ensure_future(process.stdout.read())  # type: ignore[union-attr]
    err = asyncio.ensure_future(process.stderr.read())  # type: ignore[union-attr]
    try:

        async def forwarding() -> bool:
            groups = (
                await redis.xinfo_groups(keys.alerts) if await redis.exists(keys.alerts) else []
            )
            return any(g["name"] == b"webhook" for g in groups)

        await wait_for(forwarding, timeout=60)
        sid = "s-leak"
        await redis.xadd(keys.stream, {"type": "session_started", "session_id": sid,
                                       "pairs": "ETH/USD", "ts": str(now_ms())})  # fmt: skip
        await redis.xadd(keys.stream, fill(sid, "f-1", "o-1", symbol="ETH/USD", price="3000",
                                           quantity="0.5", fee="0.1"))  # fmt: skip
        # an alert that carries every secret, as a careless writer might raise it
        planted = await redis.xadd(keys.alerts, {"kind": "test", "message": f"oops {everything}"})

        async def exercised() -> bool:
            return len(echoing_kraken.calls("AddOrder")) >= 2 and len(sink.posts) >= 2

        await wait_for(exercised, timeout=90)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 60)
    stdout, stderr = (await out).decode(), (await err).decode()
    assert "Traceback" not in stderr
    assert "Internal error ***" in stderr  # the exchange's echo was logged, masked
    streams = []
    for stream in (keys.alerts, keys.takeprofits, keys.dead):
        for entry_id, fields in await redis.xrange(stream):
            if entry_id != planted:
                streams += [f"{k.decode()}={v.decode()}" for k, v in fields.items()]
    posted = [p.decode() for p in sink.posts]
    assert logs.MASK in "\n".join(posted)  # the alert with the secrets went out masked
    assert not leaks(stdout), stdout
    assert not leaks(stderr), stderr
    assert not leaks(*streams), streams
    assert not leaks(*posted), posted


async def test_an_unreachable_exchange_url_with_a_password_shows_none(
    secret_env: dict[str, str], redis: aioredis.Redis, keys: Keys
) -> None:
    """The exchange's REST URL (with a proxy password) answers nothing: the fill is
    recorded, covering is deferred, and the logs name the failure without the password."""
    await redis.xadd(keys.stream, fill("s-x", "f-1", "o-1", symbol="ETH/USD", price="3000"))
    env = {
        **secret_env,
        "EXCHANGE": "kraken",
        "EXCHANGE_API_URL": f"http://proxy:{API_URL_PW}@127.0.0.1:1",
        "TP_PENDING_SETTLE_MS": "80000",
    }
    done = await asyncio.to_thread(run, env, "coverage", "--drain", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no market rules" in done.stderr or "unreachable" in done.stderr
    assert not leaks(done.stdout, done.stderr)


def test_the_cli_protects_the_environment_before_parsing_it(secret_env: dict[str, str]) -> None:
    """Even a crash before the settings exist prints no secret: main() protects the
    environment's secret values first (here a bug is simulated by a broken module)."""
    code = (
        "import sys, mmops.cli as cli\n"
        "def boom(args): raise RuntimeError('crash with ' + __import__('os').environ['LEAK'])\n"
        "p = cli.parser(); a = p.parse_args(['status']); a.func = boom\n"
        "cli.parser = lambda: type('P', (), {'parse_args': lambda self, argv: a})()\n"
        "sys.exit(cli.main(['status']))\n"
    )
    env = {**secret_env, "LEAK": API_KEY, "PYTHONPATH": secret_env["PYTHONPATH"]}
    done = subprocess.run(
        [MMOPS[0], "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "RuntimeError: crash with ***" in done.stderr
    assert not leaks(done.stdout, done.stderr)
