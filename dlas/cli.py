"""What every entry point (train.py, deploy.py, search.py, characterize.py) does around
its Hydra main: signals and user errors.

Signals. Left alone, SIGTERM kills Python outright (a run being compiled stays RUNNING),
and Lightning turns it into a ``SystemExit`` without a code (exit 0, the run FAILED with
an empty error) and Ctrl-C into ``sys.exit(1)``. :func:`entry` installs one handler for
SIGINT and SIGTERM that raises :class:`Interrupted`, a ``KeyboardInterrupt``, so every
layer treats both as Ctrl-C: Lightning and Optuna shut down their loop, measurement
children are killed by their ``finally``, the stage cache's temporary folder is removed,
the MLflow run ends KILLED with ``interrupted by SIGTERM`` (``dlas.tracking``), and the
process exits 128 + the signal number (130, 143), as a shell reports a killed job. A
second signal while the first unwinds exits at once (the next dlas process then marks
the run KILLED, see ``dlas.tracking.sweep``).

User errors (:class:`dlas.errors.UserError`) print one line and exit non-zero in a single
run; in a sweep they are handed to Hydra, which marks that point failed and goes on.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from dlas.errors import UserError

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; raised from the signal handler wherever the main thread is."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"interrupted by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interruption(err: BaseException | None) -> Interrupted | None:
    """The signal behind ``err``, if any: ours, a bare ``KeyboardInterrupt`` (SIGINT
    without our handler), Lightning's ``SIGTERMException``, or any error raised while one
    of those was unwinding (Lightning re-raises Ctrl-C as ``sys.exit(1)``). Once our
    handler has fired, every error is the signal's: a handler raising inside a Python
    callback of TVM's C++ comes back as a plain ``RuntimeError`` without its cause."""
    if _received:
        return Interrupted(_received[0])
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, Interrupted):
            return err
        if isinstance(err, KeyboardInterrupt):
            return Interrupted(signal.SIGINT)
        if type(err).__name__ == "SIGTERMException":  # Lightning's, not imported here
            return Interrupted(signal.SIGTERM)
        suppressed = err.__suppress_context__ and err.__cause__ is None
        err = None if suppressed else (err.__cause__ or err.__context__)
    return None


def _on_signal(signum: int, frame: Any) -> None:
    if _received:  # the first one is still unwinding: the user insists
        name = signal.Signals(signum).name
        os.write(2, f"dlas: second {name}: exiting now, the run is left to be reaped\n".encode())
        os._exit(128 + signum)
    _received.append(signum)
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` (main thread only). A SIGINT that the
    parent set to be ignored (a background job of a non-interactive shell) stays ignored,
    as Python itself does."""
    _received.clear()
    for sig in SIGNALS:
        if sig == signal.SIGINT and signal.getsignal(sig) == signal.SIG_IGN:
            continue
        signal.signal(sig, _on_signal)


def entry(hydra_main: Callable[[], Any]) -> None:
    """Run an entry point's Hydra main with the signal handlers; an interruption exits
    128 + its signal number after the run has been closed on the way out."""
    install_signal_handlers()
    try:
        hydra_main()
    except BaseException as err:
        stop = interruption(err)
        if stop is None:
            raise
    else:
        if not _received:
            return
        stop = Interrupted(_received[0])  # a library swallowed the exception: still stop
    print(f"dlas: {stop}", file=sys.stderr, flush=True)
    raise SystemExit(stop.exit_code) from None


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def task(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap a Hydra task function: a :class:`UserError` prints one line (Hydra would print
    a stripped traceback); ``HYDRA_FULL_ERROR=1`` keeps the traceback. An error that is a
    signal in disguise (see :func:`interruption`) becomes :class:`Interrupted` again, so
    Hydra neither prints it nor goes on to the next point of a sweep."""

    @functools.wraps(fn)
    def run(cfg: Any) -> Any:
        try:
            return fn(cfg)
        except Exception as err:
            if _received:
                raise Interrupted(_received[0]) from err
            if not isinstance(err, UserError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"dlas: error: {err}", file=sys.stderr, flush=True)
            if _in_sweep():
                raise  # Hydra marks this point failed, runs the others, exits non-zero
            raise SystemExit(err.exit_code) from None

    return run
