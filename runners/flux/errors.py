"""Errors of the FLUX runner; each carries the process exit code the container reports."""

from __future__ import annotations


class FluxError(Exception):
    """Any failure of a take; ``exit_code`` is what ``run_flux_generation.py`` exits with."""

    exit_code: int = 1


class BadInput(FluxError):
    """A request value is invalid (range, type, path outside the workspace, unwritable output)."""

    exit_code = 2


class ModelMissing(FluxError):
    """The model folder (or a LoRA file the take needs) is not on disk."""

    exit_code = 3


class OutOfMemory(FluxError):
    """The GPU (or host) ran out of memory; a lower quality tier or a smaller size may fit."""

    exit_code = 4


class Cancelled(FluxError):
    """The take was stopped (SIGTERM, or the progress callback raised to cancel it)."""

    exit_code = 1
