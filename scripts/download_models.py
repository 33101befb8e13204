"""Download the FLUX models into the workspace (spec 6.2): ``make download-models``.

    python scripts/download_models.py [--variant FLUX.1-dev|FLUX.1-schnell|all] [--dry-run]

Each variant lands at ``$STUDIO_WORKSPACE/Library/AI_Models/flux/<variant>/`` in diffusers
format: ``model_index.json`` and the seven component folders only (the repos also hold a
23.8 GB single-file checkpoint nobody here needs). Files go through the Hugging Face cache
(default ``Library/AI_Models/.hf-cache`` in the workspace, or ``--cache-dir`` / HF_HUB_CACHE),
which makes an interrupted download resumable, and are then hard-linked (same filesystem: no
second copy) or copied into the model folder; ``model_index.json`` is placed last, so the runner
never sees a half-installed model.

FLUX.1-dev is gated: accept its licence on huggingface.co and set HF_TOKEN (or
``hf auth login``). FLUX.1-schnell (Apache-2.0) needs no token. About 34 GB per variant.
Exit codes: 0 done, 2 a token is missing, 3 the Hub cannot be reached / files not found.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from fnmatch import fnmatch
from pathlib import Path

VARIANTS = {
    "FLUX.1-schnell": "black-forest-labs/FLUX.1-schnell",
    "FLUX.1-dev": "black-forest-labs/FLUX.1-dev",
}
GATED = {"FLUX.1-dev"}
COMPONENTS = (
    "scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae",
)
ALLOW_PATTERNS = ["model_index.json", *(f"{c}/*" for c in COMPONENTS)]
MODELS_SUBDIR = Path("Library") / "AI_Models"
EXIT_NO_TOKEN, EXIT_UNREACHABLE = 2, 3


class DownloadError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def workspace_root() -> Path:
    return Path(os.environ.get("STUDIO_WORKSPACE") or "Generative_Studio_Workspace").expanduser()


def target_dir(workspace: Path, variant: str) -> Path:
    return workspace / MODELS_SUBDIR / "flux" / variant


def is_complete(folder: Path) -> bool:
    return (folder / "model_index.json").is_file() and all(
        (folder / c).is_dir() and any((folder / c).iterdir()) for c in COMPONENTS
    )


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def find_token() -> str | None:
    from huggingface_hub import get_token

    return os.environ.get("HF_TOKEN") or get_token()


def hub_reachable(timeout: float = 5.0) -> bool:
    """A quick TCP check so a machine without network fails at once, not after retries."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides; let huggingface_hub try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = host.partition(":")
    try:
        with socket.create_connection((host, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def fetch_snapshot(repo_id: str, cache_dir: Path, token: str | None) -> Path:
    """The repo's diffusers folders in the HF cache (downloaded or resumed if needed)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id, allow_patterns=ALLOW_PATTERNS, cache_dir=cache_dir, token=token
            )
        )
    except GatedRepoError as exc:
        raise DownloadError(
            f"{repo_id} is gated and this token has no access: accept the licence at "
            f"https://huggingface.co/{repo_id} with the token's account, then re-run ({exc})",
            EXIT_NO_TOKEN,
        ) from exc
    except LocalEntryNotFoundError as exc:
        how = ("unset HF_HUB_OFFLINE" if offline()
               else "check the network connection (or HTTPS_PROXY)")
        raise DownloadError(
            f"{repo_id} is not in the cache {cache_dir} and the Hub cannot be used: {how}, "
            f"then re-run `make download-models` ({exc.__class__.__name__})",
            EXIT_UNREACHABLE,
        ) from exc


def place(snapshot: Path, target: Path) -> int:
    """Hard-link (or copy) the snapshot's wanted files into ``target``; model_index.json last.

    Filtered again here: a snapshot already in the cache is returned whole, whatever patterns."""
    files = sorted(
        p for p in snapshot.rglob("*")
        if p.is_file() and any(fnmatch(p.relative_to(snapshot).as_posix(), pattern)
                               for pattern in ALLOW_PATTERNS)
    )
    files.sort(key=lambda p: p.name == "model_index.json")
    placed = 0
    for src in files:
        dest = target / src.relative_to(snapshot)
        real = src.resolve()  # HF cache snapshots are symlinks into blobs/
        if dest.is_file() and dest.stat().st_size == real.stat().st_size:
            continue  # already placed by an earlier (interrupted) run
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.partial")
        tmp.unlink(missing_ok=True)
        try:
            os.link(real, tmp)
        except OSError:  # another filesystem: copy
            shutil.copyfile(real, tmp)
        os.replace(tmp, dest)
        placed += 1
    return placed


def download(variant: str, workspace: Path, cache_dir: Path, *, dry_run: bool, force: bool) -> None:
    repo_id = VARIANTS[variant]
    target = target_dir(workspace, variant)
    if is_complete(target) and not force:
        print(f"{variant}: already in place at {target}")
        return
    token = find_token()
    print(f"{variant}: {repo_id} -> {target}")
    print(f"  files: {', '.join(ALLOW_PATTERNS)}  (cache: {cache_dir})")
    if variant in GATED and not token and not offline():
        raise DownloadError(
            f"{variant} is gated: accept its licence at https://huggingface.co/{repo_id}, create a "
            "read token at https://huggingface.co/settings/tokens, then run again with "
            "HF_TOKEN=<token> (or after `hf auth login`). FLUX.1-schnell needs no token: "
            "--variant FLUX.1-schnell.",
            EXIT_NO_TOKEN,
        )
    if not offline() and not hub_reachable():
        raise DownloadError(
            "cannot reach the Hugging Face Hub (huggingface.co:443). Run this on a machine with "
            "network access (or set HTTPS_PROXY), or copy an existing "
            f"Library/AI_Models/flux/{variant} folder into {target.parent}.",
            EXIT_UNREACHABLE,
        )
    if dry_run:
        print("  dry run: nothing downloaded")
        return
    snapshot = fetch_snapshot(repo_id, cache_dir, token)
    placed = place(snapshot, target)
    if not is_complete(target):
        raise DownloadError(f"{variant}: {target} is incomplete after download", EXIT_UNREACHABLE)
    print(f"{variant}: ready at {target} ({placed} files placed)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--variant", choices=[*VARIANTS, "all"], default="all")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="workspace root (default: $STUDIO_WORKSPACE)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="HF cache (default: $HF_HUB_CACHE or Library/AI_Models/.hf-cache)")
    parser.add_argument("--dry-run", action="store_true", help="say what would happen only")
    parser.add_argument("--force", action="store_true", help="re-check a complete folder too")
    args = parser.parse_args(argv)
    workspace = (args.workspace or workspace_root()).expanduser()
    cache_dir = args.cache_dir or (
        Path(os.environ["HF_HUB_CACHE"]) if os.environ.get("HF_HUB_CACHE")
        else workspace / MODELS_SUBDIR / ".hf-cache"
    )
    variants = list(VARIANTS) if args.variant == "all" else [args.variant]
    try:
        for variant in variants:
            download(variant, workspace, cache_dir, dry_run=args.dry_run, force=args.force)
    except DownloadError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
