"""The workspace on disk: where projects, renders and models live, and the one safe-path rule."""

from __future__ import annotations

import os
import re
import unicodedata
from functools import lru_cache
from pathlib import Path, PurePosixPath

ENV_VAR = "STUDIO_WORKSPACE"
DEFAULT_ROOT = "Generative_Studio_Workspace"
PROJECTS = "Projects"
MODELS = "Library/AI_Models"
# Where artists put the LoRA files of character and style assets (GET /api/loras lists them).
LORAS = "Library/LoRAs"
RENDERS = "03_Renders"
# Created in every new project; numbered so they sort in production order.
PROJECT_FOLDERS = ("01_Assets", "02_Scripts", RENDERS, "04_Exports")
MANIFEST = "project.json"

PROJECT_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class PathEscapeError(ValueError):
    """A relative path that would reach outside its folder."""


def check_relative(rel: str) -> PurePosixPath:
    """The lexical half of `safe_path`: a relative POSIX path with no `..` and no absolute root.

    Used where there is no disk to look at (validating a manifest); `safe_path` adds symlinks.
    """
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise PathEscapeError(f"{rel!r} is not a usable relative path")
    return _check_relative_text(rel)


@lru_cache(maxsize=65536)
def _check_relative_text(rel: str) -> PurePosixPath:
    # Cached (a pure function of the text): every load of a 1,000-take project.json checks
    # every take's path, and pathlib's parsing was a third of that load.
    if "\\" in rel:
        raise PathEscapeError(f"{rel!r}: paths use '/' (POSIX style), not '\\'")
    path = PurePosixPath(rel)
    if path.is_absolute():
        raise PathEscapeError(f"{rel!r} is absolute; paths must be relative to the project")
    if ".." in path.parts:
        raise PathEscapeError(f"{rel!r} contains '..'; paths may not leave the project")
    return path


def safe_path(project_dir: Path, rel: str) -> Path:
    """Resolve a relative path from a manifest or a client inside `project_dir`, or refuse it.

    Refuses `..`, absolute paths, and symlinks (anywhere along the path) that lead outside.
    Works the same for any base folder, e.g. the workspace root for LoRA paths.
    """
    base = Path(project_dir).resolve()
    try:
        resolved = (base / check_relative(rel)).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise PathEscapeError(f"{rel[:200]!r} cannot be resolved ({type(exc).__name__})") from None
    if not resolved.is_relative_to(base):
        raise PathEscapeError(f"{rel!r} leads outside {base} through a symlink (to {resolved})")
    return resolved


# --- project names --------------------------------------------------------------------------

MAX_NAME_CHARS = 100
# Device names Windows will not create a file or folder under, with any extension, any case.
WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"{dev}{n}" for dev in ("COM", "LPT") for n in (*"123456789", "¹", "²", "³")}
)
# Joiners that some scripts (Persian, Devanagari, ...) need inside words.
_JOINERS = frozenset("\u200c\u200d")
_NAME_PUNCTUATION = frozenset("-_")


def is_windows_reserved(name: str) -> bool:
    return name.split(".", 1)[0].strip().upper() in WINDOWS_RESERVED


def _name_char_ok(char: str) -> bool:
    category = unicodedata.category(char)
    return (category[0] in "LMN" or category == "Zs" or char in _NAME_PUNCTUATION
            or char in _JOINERS)


def check_project_name(name: str) -> str:
    """A project's name as shown: letters of any script, digits, spaces, '-' and '_'.

    Never control characters (NUL, newlines, bidi overrides), never a Windows device name; the
    name is NFC-normalized and stripped. Raises ValueError saying what is wrong.
    """
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise ValueError("a project name needs at least one letter or digit")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"a project name has at most {MAX_NAME_CHARS} characters, "
                         f"not {len(name)}")
    bad = sorted({c for c in name if not _name_char_ok(c)})
    if bad:
        shown = ", ".join(repr(c) if c.isprintable() else f"U+{ord(c):04X}" for c in bad[:5])
        raise ValueError("a project name holds letters (of any script), digits, spaces, '-' "
                         f"and '_'; not {shown}")
    if not any(c.isalnum() for c in name):
        raise ValueError(f"project name {name!r} has no letters or digits")
    if is_windows_reserved(name):
        raise ValueError(f"{name!r} is a device name on Windows (CON, PRN, AUX, NUL, COM1-9, "
                         "LPT1-9) and cannot name a project")
    return name


# A project named only in scripts without an ASCII form (Japanese, Greek, ...) gets this id.
FALLBACK_ID = "Project"


def slugify(name: str) -> str:
    """A project id (its folder name) from its name: "Project Odyssey" -> "Project_Odyssey".

    ASCII only, so the folder name is safe on every file system and in URLs, tags and container
    names; a name with letters but none of them Latin gets FALLBACK_ID (the store numbers it).
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_name).strip("_-")[:64].rstrip("_-")
    if not slug:
        if not any(c.isalnum() for c in name):
            raise ValueError(f"project name {name!r} has no letters or digits to make an id from")
        slug = FALLBACK_ID
    if is_windows_reserved(slug):
        slug = f"{slug}_project"
    return slug


class Workspace:
    """`STUDIO_WORKSPACE` (default ./Generative_Studio_Workspace) and its fixed layout."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root or os.environ.get(ENV_VAR) or DEFAULT_ROOT).absolute()

    @property
    def projects_dir(self) -> Path:
        return self.root / PROJECTS

    @property
    def models_dir(self) -> Path:
        return self.root / MODELS

    @property
    def loras_dir(self) -> Path:
        return self.root / LORAS

    def ensure(self) -> None:
        """Create the workspace's fixed folders (idempotent)."""
        self.projects_dir.mkdir(parents=True, exist_ok=True)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.loras_dir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"
