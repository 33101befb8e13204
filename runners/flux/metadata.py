"""The parameters of a take, carried inside its PNG so the take can be re-created from the file.

Scheme (two text chunks, both written, UTF-8 iTXt):

* ``gms:parameters``: one JSON object, the exact values (``read_metadata`` returns it);
* ``parameters``: the same in the A1111 text layout (prompt, ``Negative prompt: ...``, then
  ``Steps: 4, CFG scale: 3.5, Seed: 42, Size: 256x256, Model: FLUX.1-dev, ...``), which image
  viewers and model sites already show.

Nothing time-dependent goes in: the same parameters and seed give a byte-identical file.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

JSON_KEY = "gms:parameters"
TEXT_KEY = "parameters"
SCHEMA = "gms-flux/1"


def a1111_text(meta: dict[str, Any]) -> str:
    """The A1111 layout of ``meta`` (informational; the JSON chunk is authoritative)."""
    lines = [str(meta.get("prompt", ""))]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    fields = {
        "Steps": meta.get("steps"),
        "Sampler": "FlowMatchEuler",
        "CFG scale": meta.get("cfg_scale"),
        "Seed": meta.get("seed"),
        "Size": f"{meta.get('width')}x{meta.get('height')}",
        "Model": meta.get("variant"),
        "Quality": meta.get("quality"),
        "Pipeline": meta.get("pipeline_id"),
    }
    for i, lora in enumerate(meta.get("loras") or []):
        fields[f"Lora {i + 1}"] = f"{Path(lora['path']).name}:{lora['weight']}"
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v not in (None, "")))
    return "\n".join(lines)


def png_bytes(image: Image.Image, meta: dict[str, Any]) -> bytes:
    """Encode ``image`` as PNG with both parameter chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt(JSON_KEY, json.dumps(meta, sort_keys=True, ensure_ascii=False))
    info.add_itxt(TEXT_KEY, a1111_text(meta))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The parameters a take was made with (the JSON chunk); ValueError if the PNG has none."""
    with Image.open(path) as img:
        img.load()
        text = getattr(img, "text", {}) or {}
    if JSON_KEY not in text:
        raise ValueError(f"{path}: no {JSON_KEY!r} chunk (not written by the FLUX runner)")
    return json.loads(text[JSON_KEY])
