"""The file route's second way in: a link signed for that one file (tasks/artifacts.py), as the
Prefect UI's image artifacts and contact sheets carry, instead of the API token itself."""

from __future__ import annotations

from fastapi import Request

from api.auth import require_token
from api.deps import settings_of
from tasks.artifacts import SIGNATURE_PARAM, signature_ok


def require_token_or_file_signature(request: Request) -> None:
    """Router dependency: the API token, or on the file route a valid, unexpired signature."""
    secret = settings_of(request).token
    signature = request.query_params.get(SIGNATURE_PARAM)
    params = request.path_params
    # Only the file route has a `path` parameter: a signature opens nothing else.
    if secret and signature and "path" in params and "project_id" in params:
        if signature_ok(secret, params["project_id"], params["path"], signature):
            return
    require_token(request)
