"""Create (or update) the work pools.

    python -m scripts.create_pools [NAME ...]        the local pool and the Docker GPU pools
    python -m scripts.create_pools --kubernetes      + the Kubernetes GPU pools (k8s-gpu-*)

The templates read their configuration from the environment (docs/deploy.md): STUDIO_GPUS,
STUDIO_IMAGE_REGISTRY, STUDIO_IMAGE_PULL_POLICY, STUDIO_WORKSPACE_VOLUME,
STUDIO_ADVERTISED_PREFECT_API_URL, STUDIO_PUBLIC_URL, STUDIO_DOCKER_NETWORK_MODE,
STUDIO_K8S_NAMESPACE, STUDIO_K8S_WORKSPACE_CLAIM.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from deployments.pools import ensure_pools


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.create_pools",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="only these pools (default: all)")
    parser.add_argument("--kubernetes", action="store_true",
                        help="also the Kubernetes GPU pools k8s-gpu-12gb/16gb/24gb")
    args = parser.parse_args(argv)
    for name in asyncio.run(ensure_pools(args.names or None, kubernetes=args.kubernetes)):
        print(f"work pool ready: {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
