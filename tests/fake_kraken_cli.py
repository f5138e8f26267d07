"""`python -m tests.fake_kraken_cli`: the Kraken stand-in by hand (see the README)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import signal

from tests.fake_kraken import FakeKraken
from tests.fake_kraken_data import INTERMEDIATE, PRO, STARTER

TIERS = {"starter": STARTER, "intermediate": INTERMEDIATE, "pro": PRO}
DEMO_KEY = "mmopsDEMOkey"
DEMO_SECRET = base64.b64encode(b"mmops-demo-secret-for-the-stand-in-only").decode()


async def _serve(args: argparse.Namespace) -> None:
    kraken = FakeKraken(api_key=args.api_key, api_secret=args.api_secret, limits=TIERS[args.tier])
    await kraken.start(args.host, args.port)
    print(f"Kraken stand-in on {kraken.url} (tier {args.tier}); for the workers:", flush=True)
    print(f"  EXCHANGE=kraken EXCHANGE_API_URL={kraken.url} KRAKEN_TIER={args.tier}", flush=True)
    print(f"  EXCHANGE_API_KEY={args.api_key} EXCHANGE_API_SECRET={args.api_secret}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await kraken.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="a local Kraken stand-in (tests only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--tier", choices=sorted(TIERS), default="starter")
    parser.add_argument("--api-key", default=DEMO_KEY)
    parser.add_argument("--api-secret", default=DEMO_SECRET, help="base64")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
