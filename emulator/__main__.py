"""``python -m emulator`` / ``b24q-emulator``: run the emulator until SIGTERM/SIGINT.

With ``--portals N`` it creates ``portal-1.bitrix24.test`` … ``portal-N.bitrix24.test`` (auto_messages and
auto_connectors on) and prints each one's PortalInfo as one JSON line on stdout, then ``READY {url}``, flushing,
so a parent process can parse the handshake.  ``--print-json`` also dumps the full state as one JSON line on exit.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from .core import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, Emulator


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="b24q-emulator", description="Bitrix24 cloud portal emulator")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--portals", type=int, default=0, help="create N portals and print their PortalInfo")
    ap.add_argument("--rate", type=float, default=None, help="leaky-bucket drain per second (0 = unlimited)")
    ap.add_argument("--burst", type=int, default=None, help="leaky-bucket size")
    ap.add_argument("--plan", choices=["standard", "enterprise"], default=None)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to every REST answer")
    ap.add_argument("--op-cost", type=float, default=None, help="operating seconds charged per call")
    ap.add_argument("--token-ttl", type=float, default=None, help="access token lifetime, seconds")
    ap.add_argument("--auto", action="store_true", help="auto_messages/auto_connectors for every portal")
    ap.add_argument("--sender", action="append", default=[], help="sender CODE to pre-register (repeatable)")
    ap.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    ap.add_argument("--client-secret", default=DEFAULT_CLIENT_SECRET)
    ap.add_argument(
        "--app-handler",
        default=None,
        metavar="URL",
        help="the app's install URL: ONAPPINSTALL goes there on POST /_emulator/portals/{domain}/install",
    )
    ap.add_argument("--seed", default="0")
    ap.add_argument("--print-json", action="store_true", help="print the final state as JSON on exit")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    defaults: dict[str, Any] = {}
    if args.plan is not None:
        defaults["plan"] = args.plan
    if args.rate is not None:
        defaults["rate"] = args.rate
    if args.burst is not None:
        defaults["burst"] = args.burst
    if args.op_cost is not None:
        defaults["op_cost"] = args.op_cost
    if args.token_ttl is not None:
        defaults["token_ttl"] = args.token_ttl
    if args.auto:
        defaults.update(auto_messages=True, auto_connectors=True)

    emu = Emulator(
        args.host,
        args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        seed=args.seed,
        app_handler=args.app_handler,
        **defaults,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    emu.start()
    try:
        for i in range(1, args.portals + 1):
            domain = f"portal-{i}.bitrix24.test"
            info = emu.add_portal(domain, auto_messages=True, auto_connectors=True, senders=args.sender)
            if args.latency:
                emu.set_faults(domain, latency=args.latency)
            print(json.dumps(info.to_dict()), flush=True)
        print(f"READY {emu.url}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        if args.print_json:
            print(json.dumps(emu.state()), flush=True)
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
