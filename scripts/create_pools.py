"""Create (or update) the work pools: `python -m scripts.create_pools [NAME ...]`."""

from __future__ import annotations

import asyncio
import sys

from deployments.pools import ensure_pools


def main(argv: list[str]) -> None:
    for name in asyncio.run(ensure_pools(argv or None)):
        print(f"work pool ready: {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
