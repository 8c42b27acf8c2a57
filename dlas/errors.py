"""Errors the user fixes from the message alone, and how they reach the terminal.

A bad value, a missing dataset root or an unreachable tracking store is not a bug: its
traceback helps nobody and hides the one line that matters. These errors derive from
:class:`UserError`, which the entry points print as a single ``dlas: error: ...`` line
(``HYDRA_FULL_ERROR=1`` shows the traceback). It is also one of Hydra's compact
exceptions, so a sweep that collects a failed point reports it the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hydra.errors import CompactHydraException, HydraException


class UserError(CompactHydraException):
    """Printed as one line, without a traceback; ``exit_code`` is the process's status."""

    exit_code = 1


class ConfigError(UserError, ValueError):
    """A config value (or the input it names) is invalid; found before any run opens."""

    exit_code = 2


class TrainingDivergedError(UserError, ArithmeticError):
    """Training or fine-tuning left a model whose scores are NaN (the loss blew up): the
    learning rate or optimizer does not suit the task; the run fails instead of logging
    NaN as a result."""


class StoreUnavailableError(UserError, ConnectionError):
    """The MLflow tracking store cannot be reached (or its folder does not exist)."""


def innermost_message(err: BaseException) -> str:
    """The message of the error that started it all, without Hydra's wrapping
    (``instantiate`` re-raises a constructor's ValueError as a multi-line
    InstantiationException) or KeyError's quotes."""
    while isinstance(err, HydraException) and err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    text = str(err).strip() or type(err).__name__
    if not isinstance(err, (ValueError, LookupError, OSError, UserError)):
        # an unexpected kind may be a bug of ours: keep its name, say where the trace is
        text = f"{type(err).__name__}: {text} (HYDRA_FULL_ERROR=1 shows the traceback)"
    return " ".join(text.split())


@contextmanager
def as_config_errors() -> Iterator[None]:
    """Report anything raised while validating a point as a :class:`ConfigError`: before
    a run exists, every failure is a value the user gave (or its consequence)."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:
        raise ConfigError(innermost_message(err)) from err


def build(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, except that a :class:`UserError` the builder raises
    (hardware that is not there, ...) reaches the caller as itself, not wrapped in
    Hydra's InstantiationException, so its one-line message and exit code survive."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except HydraException as err:
        cause = err.__cause__
        while not isinstance(cause, UserError) and isinstance(cause, HydraException):
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise
