"""Prints the WebSocket protocol's JSON Schema (what the server publishes at /api/ws-protocol)
for `npm run protocol`; run from the repository root with its .venv."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from api.messages import protocol_schema  # noqa: E402

print(json.dumps(protocol_schema(), indent=2, ensure_ascii=False))
