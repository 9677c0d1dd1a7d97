"""Exceptions raised by lcjit.

Every error of the native library arrives as one of these classes, with the library's
message, which names the file, layer and field at fault. Each class also derives from the
built-in exception Python code expects for that kind of failure (``OSError`` for files,
``ValueError`` for bad configurations, shapes, weights and inputs, ``MemoryError`` for the
memory budget), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "LcjitError",
    "FileError",
    "MissingFileError",
    "ConfigError",
    "ShapeError",
    "BudgetError",
    "WeightsError",
    "InputError",
    "UsageError",
    "InterruptedError",
    "InternalError",
]


class LcjitError(Exception):
    """Base class of every lcjit error."""


class FileError(LcjitError, OSError):
    """A file could not be read or written, is not a valid file of its format, or has an
    unsupported extension."""


class MissingFileError(FileError, FileNotFoundError):
    """A file that does not exist."""


class ConfigError(LcjitError, ValueError):
    """A model configuration that is not a Keras model, or a layer field lcjit does not
    support (the message names the layer and the field)."""


class ShapeError(LcjitError, ValueError):
    """Shape inference rejected a layer, or the layer graph is malformed."""


class BudgetError(LcjitError, MemoryError):
    """A file, the weights or a run at its batch size would exceed the memory budget
    (``memory_budget=``)."""


class WeightsError(LcjitError, ValueError):
    """A weight is missing from a file or has the wrong shape."""


class InputError(LcjitError, ValueError):
    """Data given to ``predict``/``fit``/``evaluate`` does not fit the model."""


class UsageError(LcjitError, ValueError):
    """An argument out of range or a call that does not apply (e.g. ``fit`` before
    ``compile`` on a model whose file has no training configuration)."""


class InterruptedError(LcjitError):  # noqa: A001 - lcjit's own, distinct from the builtin
    """Training was stopped between two steps; the weights of the last step are kept."""


class InternalError(LcjitError, RuntimeError):
    """A bug in lcjit (never caused by the input): please report it."""
