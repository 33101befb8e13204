"""A batch's contact sheet: one PNG grid of its takes' thumbnails, each labelled shot/take/seed.

A sweep's sheet is laid out as its grid: one column per value of the first axis, one row per
combination of the others, with the axis values written along the top and the left.
A failed take keeps its cell, marked FAILED, so the grid still reads as the batch was asked.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

THUMB = 192
LABEL_H = 34
GAP = 6
MARGIN = 8
BACKGROUND = (24, 24, 27)
TEXT = (235, 235, 235)
FAILED = (200, 60, 60)


@dataclass
class Cell:
    label: str  # `SHOT-010 · take03 · seed 42`
    image: Path | None  # None: the take failed or was skipped


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _thumbnail(cell: Cell) -> Image.Image:
    tile = Image.new("RGB", (THUMB, THUMB), (40, 40, 44))
    if cell.image is not None and cell.image.is_file():
        with Image.open(cell.image) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            tile.paste(im, ((THUMB - im.width) // 2, (THUMB - im.height) // 2))
    else:
        draw = ImageDraw.Draw(tile)
        draw.text((THUMB // 2 - 24, THUMB // 2 - 6), "FAILED", fill=FAILED, font=_font())
    return tile


def _wrap(text: str, width_px: int, draw: ImageDraw.ImageDraw) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=_font()) <= width_px or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return [*lines, line][:2]


def render(cells: list[Cell], out: Path, *, columns: int | None = None,
           column_labels: list[str] | None = None, row_labels: list[str] | None = None) -> Path:
    """Writes the sheet to `out` atomically (a temporary file renamed into place)."""
    if not cells:
        raise ValueError("a contact sheet needs at least one take")
    cols = columns or min(len(cells), max(1, math.ceil(math.sqrt(len(cells)))))
    rows = math.ceil(len(cells) / cols)
    left = 110 if row_labels else 0
    top = 22 if column_labels else 0
    cell_w, cell_h = THUMB, THUMB + LABEL_H
    width = 2 * MARGIN + left + cols * cell_w + (cols - 1) * GAP
    height = 2 * MARGIN + top + rows * cell_h + (rows - 1) * GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(column_labels or []):
        x = MARGIN + left + c * (cell_w + GAP)
        draw.text((x + 4, MARGIN + 4), text, fill=TEXT, font=_font())
    for r, text in enumerate(row_labels or []):
        y = MARGIN + top + r * (cell_h + GAP)
        for i, line in enumerate(_wrap(text, left - 8, draw)):
            draw.text((MARGIN, y + THUMB // 2 - 8 + 12 * i), line, fill=TEXT, font=_font())
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        x = MARGIN + left + c * (cell_w + GAP)
        y = MARGIN + top + r * (cell_h + GAP)
        sheet.paste(_thumbnail(cell), (x, y))
        colour = TEXT if cell.image is not None else FAILED
        for j, line in enumerate(_wrap(cell.label, THUMB - 4, draw)):
            draw.text((x + 2, y + THUMB + 4 + 13 * j), line, fill=colour, font=_font())
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            sheet.save(f, format="PNG")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
