"""What the Prefect UI shows of a take: artifact keys by project and shot, image links that work
from any browser, and what the runner really applied.

Links start at `STUDIO_PUBLIC_URL` (where browsers reach the API). With `STUDIO_API_TOKEN` set,
a link carries a signature for that one file that expires (`STUDIO_LINK_TTL_SECONDS`, 7 days by
default) instead of the API token, so a link copied from the UI opens nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Any
from urllib.parse import quote

from studio.jobs import TakeJob

SIGNATURE_PARAM = "sig"
DEFAULT_TTL_S = 7 * 24 * 3600


def public_url() -> str:
    """Where browsers reach the API (the Prefect UI shows take images from it)."""
    return os.environ.get("STUDIO_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")


def _key(secret: str) -> bytes:
    # A key of its own: a leaked link signature says nothing about the API token.
    return hmac.new(secret.encode(), b"studio file links v1", hashlib.sha256).digest()


def file_signature(secret: str, project_id: str, path: str, expires: int) -> str:
    message = f"{project_id}\n{path}\n{expires}".encode()
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign(secret: str, project_id: str, path: str, ttl_s: int | None = None) -> str:
    """`<expires>.<hmac>`: good for this file of this project until `expires` (unix time)."""
    ttl = ttl_s if ttl_s is not None else int(os.environ.get("STUDIO_LINK_TTL_SECONDS",
                                                             DEFAULT_TTL_S))
    expires = int(time.time()) + ttl
    return f"{expires}.{file_signature(secret, project_id, path, expires)}"


def signature_ok(secret: str, project_id: str, path: str, token: str,
                 now: float | None = None) -> bool:
    expires_text, _, digest = token.partition(".")
    if not expires_text.isdigit() or not digest:
        return False
    expires = int(expires_text)
    if expires < (time.time() if now is None else now):
        return False
    expected = file_signature(secret, project_id, path, expires)
    return hmac.compare_digest(expected, digest)


def file_url(project_id: str, path: str) -> str:
    """The API's URL of a project file, signed when the API needs a token."""
    url = f"{public_url()}/api/projects/{quote(project_id)}/files/{quote(path)}"
    secret = os.environ.get("STUDIO_API_TOKEN")
    if secret:
        url += f"?{SIGNATURE_PARAM}={sign(secret, project_id, path)}"
    return url


def slug(text: str) -> str:
    """An artifact key part: `^[a-z0-9-]*$` (Prefect's rule)."""
    raw = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(part for part in raw.split("-") if part)


def take_key(job: TakeJob) -> str:
    """`take-project-odyssey-shot-015`: a shot's takes are versions of one artifact in the UI."""
    return f"take-{slug(job.project_id)}-{slug(job.shot.shot)}"


def batch_key(project_id: str, kind: str) -> str:
    """`batch-project-odyssey-summary`, `...-contact-sheet`, `...-progress`."""
    return f"batch-{slug(project_id)}-{kind}"


def effective_settings(job: TakeJob) -> dict[str, Any]:
    """Steps and CFG as the tier renders them: FLUX.1-schnell (low) clamps steps to 4 and has no
    guidance input, so a CFG scale without a negative prompt does nothing there."""
    from runners.flux.guidance import has_negative
    from runners.flux.tiers import get_tier

    tier = get_tier(job.quality_used)
    p = job.params
    steps = min(p.steps, tier.max_steps)
    if has_negative(p.negative_prompt):
        cfg: float | None = p.cfg_scale  # true CFG, on every tier
    else:
        cfg = p.cfg_scale if tier.guidance_embeds else None
    notes = []
    if steps != p.steps:
        notes.append(f"{tier.variant} renders at most {tier.max_steps} steps")
    if cfg is None:
        notes.append(f"{tier.variant} has no guidance input: CFG {p.cfg_scale:g} is ignored")
    return {"steps": steps, "cfg_scale": cfg, "notes": notes}


def describe_effective(job: TakeJob) -> tuple[str, str]:
    """The table's `steps` and `cfg scale` cells: what was asked, and what was applied."""
    applied = effective_settings(job)
    p = job.params
    steps = str(p.steps) if applied["steps"] == p.steps else \
        f"{applied['steps']} (asked {p.steps}; {job.quality_used.value} tier maximum)"
    if applied["cfg_scale"] is None:
        cfg = f"ignored (asked {p.cfg_scale:g}; no guidance input on the " \
              f"{job.quality_used.value} tier)"
    else:
        cfg = f"{applied['cfg_scale']:g}"
    return steps, cfg
