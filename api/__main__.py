"""`python -m api [--host H] [--port P]`: the gateway under uvicorn.

Refuses a host other than loopback unless STUDIO_API_TOKEN is set: the API can start renders
and read every project, so it is not put on a network open to anyone.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from api.auth import is_loopback

WILDCARDS = ("0.0.0.0", "::", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("STUDIO_API_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("STUDIO_API_PORT", 8000)))
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if not is_loopback(args.host) and not os.environ.get("STUDIO_API_TOKEN"):
        print(f"refusing to listen on {args.host}: set STUDIO_API_TOKEN first (every request "
              "will then need it), or use 127.0.0.1", file=sys.stderr)
        return 2

    import uvicorn

    from api.app import create_app
    from api.settings import Settings

    # The gateway's own lines (the reconciler's hand-outs, retries, failures) in the API's log,
    # where ops look when a take took long: Prefect's logging set-up keeps the root at WARNING.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    gateway_log = logging.getLogger("api")
    gateway_log.addHandler(handler)
    gateway_log.setLevel(logging.INFO)
    gateway_log.propagate = False

    settings = Settings()
    if args.host not in WILDCARDS:  # the address it listens on is one of its own names
        settings.allowed_hosts.append(args.host)
    # Frames above ws_max_size close the socket (1009); below it, the gateway's own frame limit
    # answers server:error and keeps the socket open. No per-message compression: the messages
    # are a few hundred bytes, and compressing each one for each socket cost the event loop more
    # than the bytes saved (bench/ws_burst.py, 200 sockets).
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level,
                ws_ping_interval=20, ws_ping_timeout=20, ws_max_size=1024 * 1024,
                ws_per_message_deflate=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
