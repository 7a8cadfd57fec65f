"""Error types. Every user-facing failure is a :class:`ContrastLensError` with a one-line message
that says what is wrong and what to do; the CLI prints it and exits with status 2."""

from __future__ import annotations


class ContrastLensError(Exception):
    """Base class of all errors the toolkit raises on bad input."""


class UnsupportedArchitectureError(ContrastLensError):
    """The model's architecture has no adapter (so no AttnLRP rules)."""


class TokenizationError(ContrastLensError):
    """A target/contrast string is not exactly one token, or an id is out of range."""


class InputError(ContrastLensError):
    """Empty prompt, prompt too long, target equal to contrast, ..."""


class ModelLoadError(ContrastLensError):
    """A model file is missing, corrupt or of an unknown kind."""


class NumericalError(ContrastLensError):
    """NaN or inf appeared in the forward pass."""


class CoverageError(ContrastLensError):
    """A non-linear operation on the attribution path has no LRP rule."""
