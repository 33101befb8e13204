"""The FLUX runner's contract with whoever runs it (ARCHITECTURE.md): each part written once.

- ``Quality`` (the QUALITY values), ``MAX_SEED``, ``MAX_PROMPT_CHARS``;
- ``FluxRequest``: one take's inputs, and its env form (``to_env`` / ``from_env``);
- ``ExitCode`` and the errors that carry one;
- the stdout lines ``SEED: <n>``, ``PROGRESS: <0-100> | <text>[ | preview=<path>]``,
  ``OUTPUT: <path>`` and the stderr lines ``NOTE: ...`` / ``ERROR: ...``, written and parsed here;
- the preview path rule.

Torch-free and project-free: the runner image holds only ``runners/flux``, and the host side
(``runners/strategies.py``, ``studio``) imports this module for the same values.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, Protocol


class Quality(StrEnum):
    """A project's quality tier; the runner's settings per tier are in ``runners/flux/tiers``."""

    low = "low"
    standard = "standard"
    high = "high"


DEFAULT_QUALITY = Quality.standard
# torch.Generator.manual_seed takes any 64-bit value, but a seed travels as a JSON number to the
# canvas, where integers above 2**53 lose digits: 32 bits is the range every part holds exactly.
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 4000
LORA_KINDS = ("character", "style")
LORA_WEIGHT_RANGE = (-4.0, 4.0)
DEFAULT_WORKSPACE = Path("/workspace")
# Every variable the runner reads: a child process must not inherit stray ones from its parent.
ENV_NAMES = ("PROMPT", "OUTPUT_PATH", "NEGATIVE_PROMPT", "SEED", "CFG_SCALE", "STEPS", "WIDTH",
             "HEIGHT", "QUALITY", "MODEL_DIR", "STUDIO_WORKSPACE", "PREVIEW_PATH", "PREVIEW_EVERY",
             "LORAS", "PIPELINE_ID")


# --------------------------------------------------------------------------- exit codes


class ExitCode(IntEnum):
    """How the runner process ends; 0 means the image exists at OUTPUT_PATH."""

    OK = 0
    FAILED = 1  # a runner error, a cancel, anything unexpected
    BAD_INPUT = 2
    MODEL_MISSING = 3  # the model folder or a LoRA file is not on disk
    OUT_OF_MEMORY = 4
    KILLED = 137  # SIGKILL (128 + 9): the kernel's OOM killer or a forced stop; no message

    @property
    def reason(self) -> str:
        return _REASONS[self]

    @property
    def retryable(self) -> bool:
        """Whether a second try may pass: bad input, a missing file or too little memory fail
        the same way every time."""
        return self not in (ExitCode.BAD_INPUT, ExitCode.MODEL_MISSING, ExitCode.OUT_OF_MEMORY)

    @classmethod
    def of(cls, returncode: int) -> ExitCode | None:
        """The code of a process return code (``-9`` from Popen is 137); None if unknown."""
        code = 128 - returncode if returncode < 0 else returncode
        try:
            return cls(code)
        except ValueError:
            return None


_REASONS = {
    ExitCode.OK: "image written",
    ExitCode.FAILED: "runner error",
    ExitCode.BAD_INPUT: "bad input",
    ExitCode.MODEL_MISSING: "model missing",
    ExitCode.OUT_OF_MEMORY: "out of GPU memory",
    ExitCode.KILLED: "killed (out of memory, or stopped by force)",
}


def describe_exit(returncode: int) -> str:
    code = ExitCode.of(returncode)
    return code.reason if code is not None else f"exit code {returncode}"


def is_retryable(returncode: int) -> bool:
    code = ExitCode.of(returncode)
    return code is None or code.retryable


class FluxError(Exception):
    """Any failure of a take; ``exit_code`` is what the runner process exits with."""

    exit_code: ExitCode = ExitCode.FAILED


class BadInput(FluxError):
    """A request value is invalid (range, type, path outside the workspace, unwritable output)."""

    exit_code = ExitCode.BAD_INPUT


class ModelMissing(FluxError):
    """The model folder (or a LoRA file the take needs) is not on disk."""

    exit_code = ExitCode.MODEL_MISSING


class OutOfMemory(FluxError):
    """The GPU (or host) ran out of memory; a lower quality tier or a smaller size may fit."""

    exit_code = ExitCode.OUT_OF_MEMORY


class Cancelled(FluxError):
    """The take was stopped (SIGTERM, or the progress callback raised to cancel it)."""

    exit_code = ExitCode.FAILED


ERRORS: dict[ExitCode, type[FluxError]] = {
    ExitCode.FAILED: FluxError,
    ExitCode.BAD_INPUT: BadInput,
    ExitCode.MODEL_MISSING: ModelMissing,
    ExitCode.OUT_OF_MEMORY: OutOfMemory,
}


def parse_quality(raw: str | Quality) -> Quality:
    """The one place a QUALITY text becomes a Quality; an unknown value is bad input."""
    try:
        return Quality(str(raw).strip().lower())
    except ValueError:
        raise BadInput(
            f"QUALITY must be one of {', '.join(Quality)}; got {raw!r}"
        ) from None


# --------------------------------------------------------------------------- stdout / stderr


class ProgressCallback(Protocol):
    def __call__(self, percent: int, step: str, preview_path: str | None) -> None: ...


@dataclass(frozen=True)
class Progress:
    percent: int
    step: str
    preview_path: str | None = None

    def line(self) -> str:
        text = f"PROGRESS: {self.percent} | {self.step}"
        return f"{text} | preview={self.preview_path}" if self.preview_path else text


_PROGRESS = re.compile(r"^PROGRESS:\s*(\d{1,3})\s*\|\s*(.*)$")
_SEED = re.compile(r"^SEED:\s*(\d+)\s*$")


def parse_progress(line: str) -> Progress | None:
    """A PROGRESS line as a Progress, or None for any other line."""
    match = _PROGRESS.match(line.strip())
    if not match:
        return None
    preview, step = None, []
    for part in (p.strip() for p in match.group(2).split("|")):
        if part.startswith("preview="):
            preview = part.removeprefix("preview=") or None
        else:
            step.append(part)
    return Progress(max(0, min(100, int(match.group(1)))), " | ".join(step), preview)


def seed_line(seed: int) -> str:
    return f"SEED: {seed}"


def parse_seed(line: str) -> int | None:
    match = _SEED.match(line.strip())
    return int(match.group(1)) if match else None


def output_line(path: str | Path) -> str:
    return f"OUTPUT: {path}"


def note_line(note: str) -> str:
    return f"NOTE: {note}"


def error_line(message: str) -> str:
    return f"ERROR: {message}"


def failure_message(stderr_lines: list[str], returncode: int) -> str:
    """What a person reads of a failed run: the runner's ERROR line, else the tail of its stderr,
    else the exit code's reason (a killed runner says nothing)."""
    lines = [line.strip() for line in stderr_lines if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    if errors:
        return errors[-1].removeprefix("ERROR:").strip()
    if ExitCode.of(returncode) is ExitCode.KILLED:
        return f"the runner was {ExitCode.KILLED.reason} (exit code {ExitCode.KILLED.value})"
    tail = "\n".join(lines[-20:])
    return tail or f"runner failed ({describe_exit(returncode)}) without a message"


# --------------------------------------------------------------------------- the preview rule

PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def preview_path_for(output_path: Path) -> Path:
    """Where a take's live preview goes unless PREVIEW_PATH says otherwise: beside the take."""
    return output_path.with_name(f"{output_path.stem}.preview.png")


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class LoraSpec:
    """A character's or style's LoRA (``path`` relative to the workspace root). Its trigger
    words and style prompt are already in the prompt: the domain composes it."""

    path: str
    weight: float = 1.0
    kind: str = "style"


def _lora(index: int, raw: LoraSpec | Mapping[str, Any]) -> LoraSpec:
    name = f"LORAS[{index}]"
    data = asdict(raw) if isinstance(raw, LoraSpec) else raw
    if not isinstance(data, Mapping):
        raise BadInput(f"{name} must be an object {{path, weight, kind}}; got {raw!r}")
    unknown = set(data) - {"path", "weight", "kind"}
    if unknown:
        raise BadInput(f"{name} has unknown fields: {', '.join(sorted(unknown))} "
                       "(trigger words and style prompts belong in PROMPT)")
    path, weight, kind = data.get("path"), data.get("weight", 1.0), data.get("kind", "style")
    if not isinstance(path, str) or not path.strip():
        raise BadInput(f"{name}.path is required (relative to STUDIO_WORKSPACE)")
    low, high = LORA_WEIGHT_RANGE
    if isinstance(weight, bool) or not isinstance(weight, int | float) \
            or not math.isfinite(weight) or not low <= weight <= high:
        raise BadInput(f"{name}.weight must be a finite number between {low:g} and {high:g}; "
                       f"got {weight!r}")
    if kind not in LORA_KINDS:
        raise BadInput(f"{name}.kind must be 'character' or 'style'; got {kind!r}")
    return LoraSpec(path, float(weight), kind)


def _optional_path(value: str | Path | None) -> Path | None:
    return Path(value) if value not in (None, "") else None


@dataclass(frozen=True)
class FluxRequest:
    """One take's inputs; ``None`` means "the tier's default" (seed: random, reported).

    ``prompt`` is final: the domain has put the LoRAs' trigger words and style prompts in it.
    Paths are absolute or relative to ``workspace``.
    """

    prompt: str
    output_path: Path
    negative_prompt: str = ""
    seed: int | None = None
    cfg_scale: float | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    quality: Quality = DEFAULT_QUALITY
    model_dir: Path | None = None
    workspace: Path = DEFAULT_WORKSPACE
    preview_path: Path | None = None
    preview_every: int | None = None
    loras: tuple[LoraSpec, ...] = field(default_factory=tuple)
    pipeline_id: str | None = None

    def __post_init__(self) -> None:
        # Normalised once, so a request equals itself after an env round trip.
        set_ = object.__setattr__
        set_(self, "output_path", Path(self.output_path))
        set_(self, "workspace", Path(self.workspace))
        set_(self, "model_dir", _optional_path(self.model_dir))
        set_(self, "preview_path", _optional_path(self.preview_path))
        set_(self, "quality", parse_quality(self.quality))
        if not isinstance(self.loras, list | tuple):
            raise BadInput("LORAS must be a list of objects {path, weight, kind}")
        set_(self, "loras", tuple(_lora(i, raw) for i, raw in enumerate(self.loras)))

    def to_env(self) -> dict[str, str]:
        """The env a runner process reads (only the values that are set)."""
        env = {"PROMPT": self.prompt, "OUTPUT_PATH": str(self.output_path),
               "QUALITY": self.quality.value, "STUDIO_WORKSPACE": str(self.workspace)}
        optional: dict[str, Any] = {
            "NEGATIVE_PROMPT": self.negative_prompt or None, "SEED": self.seed,
            "CFG_SCALE": self.cfg_scale, "STEPS": self.steps, "WIDTH": self.width,
            "HEIGHT": self.height, "MODEL_DIR": self.model_dir, "PREVIEW_PATH": self.preview_path,
            "PREVIEW_EVERY": self.preview_every, "PIPELINE_ID": self.pipeline_id,
            "LORAS": json.dumps([asdict(lo) for lo in self.loras]) if self.loras else None,
        }
        env.update({k: repr(v) if isinstance(v, float) else str(v)
                    for k, v in optional.items() if v is not None})
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> FluxRequest:
        """Read the env contract into a request; raises BadInput."""
        prompt, output = env.get("PROMPT", ""), _opt(env, "OUTPUT_PATH")
        if not prompt.strip():
            raise BadInput("PROMPT is required and must not be empty")
        if output is None:
            raise BadInput("OUTPUT_PATH is required (where the PNG goes, inside STUDIO_WORKSPACE)")
        return cls(
            prompt=prompt,
            output_path=Path(output),
            negative_prompt=env.get("NEGATIVE_PROMPT", ""),
            seed=_int(env, "SEED"),
            cfg_scale=_float(env, "CFG_SCALE"),
            steps=_int(env, "STEPS"),
            width=_int(env, "WIDTH"),
            height=_int(env, "HEIGHT"),
            quality=parse_quality(_opt(env, "QUALITY") or DEFAULT_QUALITY),
            model_dir=_optional_path(_opt(env, "MODEL_DIR")),
            workspace=Path(_opt(env, "STUDIO_WORKSPACE") or DEFAULT_WORKSPACE),
            preview_path=_optional_path(_opt(env, "PREVIEW_PATH")),
            preview_every=_int(env, "PREVIEW_EVERY"),
            loras=_loras(_opt(env, "LORAS")),
            pipeline_id=_opt(env, "PIPELINE_ID"),
        )


def _opt(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name)
    return raw.strip() if raw is not None and raw.strip() else None


def _int(env: Mapping[str, str], name: str) -> int | None:
    raw = _opt(env, name)
    try:
        return None if raw is None else int(raw, 10)
    except ValueError:
        raise BadInput(f"{name} must be a whole number; got {raw!r}") from None


def _float(env: Mapping[str, str], name: str) -> float | None:
    raw = _opt(env, name)
    try:
        return None if raw is None else float(raw)
    except ValueError:
        raise BadInput(f"{name} must be a number; got {raw!r}") from None


def _loras(raw: str | None) -> tuple[Any, ...]:
    if raw is None:
        return ()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadInput(f"LORAS must be a JSON list of objects: {exc.msg} (at {exc.pos})") from None
    if not isinstance(value, list):
        raise BadInput("LORAS must be a JSON list of objects {path, weight, kind}")
    return tuple(value)
