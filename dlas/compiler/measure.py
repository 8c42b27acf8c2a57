"""The DLAS timing protocol, shared by every compiler and baseline so numbers compare.

Protocol (DLAS, Gibson et al. 2024): batch 1; ``warmup`` untimed runs (lazy init, caches,
JIT); then ``repeat`` samples, each the mean of ``number`` back-to-back runs; report
median (robust to a noisy neighbour), mean, std and p90 of the samples. Each measurement
runs in its own process (:func:`measure_in_subprocess`): a crash in generated code fails
that point only, and no thread pool, allocator or JIT state leaks from one point to the
next.

A :class:`Worker` keeps one runtime loaded in its own process and times it on request,
so a parent can interleave rounds of two runtimes (A/B/A/B) and compare them under one
machine state without ever running two runtimes in one process (torch's OpenMP threads
keep spinning after an eager call and slow whatever runs next to them). Each child is
pinned to the cores it is timed on (:func:`dlas.hardware.threads.pin_to`), and ends each
round only once its runtime's threads have gone idle
(:func:`dlas.hardware.load.wait_until_idle`): a spin-waiting pool in one worker would
otherwise slow the next worker's first samples.
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from dlas.hardware.load import wait_until_idle

if TYPE_CHECKING:
    from dlas.hardware import Device

T = TypeVar("T")
log = logging.getLogger("dlas.measure")

_PROGRESS_EVERY_S = 2.0
#: The longest a worker waits after a round for its runtime's threads to go idle.
SETTLE_LIMIT_S = 1.0


class MeasurementError(RuntimeError):
    """A measurement failed: the child crashed (signal / exit code), timed out, or raised."""


@dataclass
class Latency:
    """Latency statistics of one measured point, in milliseconds.

    ``samples_ms`` holds one value per repeat, each the mean over ``number`` runs.
    ``threads`` is the thread count the runtime reported while timing (0 = unknown);
    ``setup_s`` the seconds spent before timing (load, compile, warm-up).
    """

    median_ms: float
    mean_ms: float
    std_ms: float
    p90_ms: float
    repeat: int
    number: int
    samples_ms: list[float] = field(default_factory=list)
    threads: int = 0
    setup_s: float = 0.0

    @classmethod
    def from_samples(
        cls, samples_ms: Sequence[float], *, number: int, threads: int = 0, setup_s: float = 0.0
    ) -> Latency:
        """Statistics of per-repeat samples (population std, as TVM's BenchmarkResult;
        p90 by linear interpolation, numpy's default)."""
        values = np.asarray(list(samples_ms), dtype=np.float64)
        if values.size == 0:
            raise ValueError("no latency samples: repeat must be >= 1")
        return cls(
            median_ms=float(np.median(values)),
            mean_ms=float(values.mean()),
            std_ms=float(values.std()),
            p90_ms=float(np.percentile(values, 90)),
            repeat=int(values.size),
            number=int(number),
            samples_ms=[float(v) for v in values],
            threads=int(threads),
            setup_s=float(setup_s),
        )

    def metrics(self, prefix: str = "latency_ms") -> dict[str, float]:
        """The tracking schema's ``latency_ms_{mean,median,std,p90}``."""
        return {
            f"{prefix}_mean": self.mean_ms,
            f"{prefix}_median": self.median_ms,
            f"{prefix}_std": self.std_ms,
            f"{prefix}_p90": self.p90_ms,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.median_ms:.3f} ms median (mean {self.mean_ms:.3f}, std {self.std_ms:.3f}, "
            f"p90 {self.p90_ms:.3f}; {self.repeat}x{self.number} runs)"
        )


@dataclass(frozen=True)
class Protocol:
    """One round of the timing protocol: ``warmup`` untimed runs, and more until
    ``warmup_ms`` have passed, then ``repeat`` samples, each the mean of ``number``
    back-to-back runs. Checked when made, so a worker never receives a protocol it cannot
    run.

    Why a warm-up *time*: in alternating rounds each runtime starts its round right after
    another one ran, with the caches full of the other's weights. One warm-up call of a
    1 ms network does not refill them: the first sample of every round of mobilenet_v2
    came out 10-20% slower than the second (OpenVINO 1.27-1.31 ms against 1.07-1.17),
    which alone pushed the samples' CV past ``measure.max_cv``."""

    warmup: int = 1
    repeat: int = 10
    number: int = 5
    warmup_ms: float = 25.0

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeat < 1 or self.number < 1 or self.warmup_ms < 0:
            raise ValueError(
                f"timing protocol needs warmup >= 0, repeat >= 1, number >= 1, "
                f"warmup_ms >= 0; got warmup={self.warmup}, repeat={self.repeat}, "
                f"number={self.number}, warmup_ms={self.warmup_ms}"
            )

    @classmethod
    def from_config(cls, m: Any) -> Protocol:
        """The ``measure`` group's protocol."""
        return cls(int(m.warmup), int(m.repeat), int(m.number), float(m.warmup_ms))

    @property
    def cold(self) -> Protocol:
        """The same samples with no warm-up (it has been done)."""
        return replace(self, warmup=0, warmup_ms=0.0)

    def but(self, **changes: float) -> Protocol:
        """This protocol with some of its values changed (checked again)."""
        return replace(self, **changes)


#: the measure group's defaults (conf/config.yaml may say otherwise)
DEFAULT_PROTOCOL = Protocol()
#: two builds of one model timed in turn: more warm-up, longer samples
AB_PROTOCOL = Protocol(warmup=2, repeat=5, number=10)


class _Progress:
    """``measuring <what>: repeat i/N`` on stderr, at most every few seconds, so a slow
    point shows it is alive without flooding the log of a fast one."""

    def __init__(self, what: str | None, total: int) -> None:
        self.what, self.total, self.last = what, total, time.monotonic()

    def __call__(self, done: int) -> None:
        if self.what is None:
            return
        now = time.monotonic()
        if now - self.last >= _PROGRESS_EVERY_S or (done == self.total and done > 1):
            print(f"measuring {self.what}: repeat {done}/{self.total}", file=sys.stderr)
            self.last = now


def time_callable(
    fn: Callable[[], Any],
    protocol: Protocol = DEFAULT_PROTOCOL,
    *,
    what: str | None = None,
    threads: int = 0,
) -> Latency:
    """Time ``fn()`` in this process with the protocol above (``time.perf_counter``).

    ``fn`` must finish its work before returning (synchronise a GPU inside it). ``what``
    names the point in progress lines; ``threads`` is recorded in the result.
    """
    started = time.perf_counter()
    warm_up(fn, protocol)
    setup_s = time.perf_counter() - started
    samples = sample_callable(fn, protocol.cold, what=what)
    return Latency.from_samples(samples, number=protocol.number, threads=threads, setup_s=setup_s)


def warm_up(fn: Callable[[], Any], protocol: Protocol) -> int:
    """Call ``fn`` ``warmup`` times and on until ``warmup_ms`` have passed; the count."""
    started, calls = time.perf_counter(), 0
    while calls < protocol.warmup or (time.perf_counter() - started) * 1e3 < protocol.warmup_ms:
        fn()
        calls += 1
    return calls


def sample_callable(
    fn: Callable[[], Any], protocol: Protocol, *, what: str | None = None
) -> list[float]:
    """The protocol's warm-up, then ``repeat`` samples in ms, each the mean of ``number``
    back-to-back calls: one round of the protocol, as a :data:`Timer` runs it."""
    warm_up(fn, protocol)
    progress = _Progress(what, protocol.repeat)
    samples: list[float] = []
    for i in range(protocol.repeat):
        t0 = time.perf_counter()
        for _ in range(protocol.number):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / protocol.number)
        progress(i + 1)
    return samples


# ----------------------------------------------------------------- one process per point

#: One round of timing in a worker: ``timer(protocol)`` -> samples in ms.
Timer = Callable[[Protocol], list[float]]


@dataclass
class Loaded:
    """What a :class:`Worker`'s setup job returns in the child: ``result`` goes to the
    parent at once (e.g. the verification outputs); ``timer`` stays in the child for the
    rounds to come; ``close`` (if any) runs when the worker stops. ``setup_s`` is the time
    to load the runtime and make its first, untimed run (a JIT's compile step);
    ``threads`` the thread count the runtime reported."""

    result: Any
    timer: Timer
    setup_s: float = 0.0
    threads: int = 0
    close: Callable[[], None] | None = None


def _child_main(
    conn: Any,
    job: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    cores: Sequence[int] | None,
    serve: bool,
) -> None:
    """Run ``job`` and send ``("ok", result)`` or ``("error", text)`` to the parent; with
    ``serve``, ``job`` returns a :class:`Loaded` and the child then answers timing
    requests until told to stop (or the parent goes away)."""
    faulthandler.enable()  # a crash in generated code prints the Python stack that led there
    try:
        if cores:
            from dlas.hardware.threads import pin_to

            pin_to(cores)
        result = job(*args, **kwargs)
        if not serve:
            conn.send(("ok", result))
            return
        loaded: Loaded = result
        conn.send(("ok", (loaded.result, loaded.setup_s, loaded.threads)))
        try:
            _serve(conn, loaded.timer)
        finally:
            if loaded.close is not None:
                loaded.close()
    except BaseException as err:  # everything must reach the parent as text
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        # If the pipe itself fails, the exit code still tells the parent.
        with contextlib.suppress(Exception):
            conn.send(("error", text))
        raise SystemExit(1) from None
    finally:
        conn.close()


def _serve(conn: Any, timer: Timer) -> None:
    while True:
        try:
            command = conn.recv()
        except EOFError:  # the parent is gone: nothing left to answer
            return
        if command[0] == "stop":
            return
        _, protocol = command
        samples = timer(protocol)
        # The round ends when this runtime's threads have stopped spinning, so they do not
        # take the cores from whichever runtime is timed next.
        waited_s, idle = wait_until_idle(SETTLE_LIMIT_S)
        conn.send(("ok", (samples, waited_s, idle)))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (exit code {code})"
    return f"exited with code {code}"


class Worker:
    """One runtime in its own process, loaded once and timed round after round.

    ``start(job, ...)`` spawns the child (pinned to ``cores`` when given) and returns what
    its setup job reported; ``time(protocol)`` runs one round there and
    returns its samples; ``close()`` (or leaving ``with``) stops it. Every request waits at
    most ``timeout`` seconds; a crash, a timeout (the child is killed) or an exception in
    the child raises :class:`MeasurementError` naming ``label``, and this process is
    unaffected.
    """

    def __init__(self, label: str, *, timeout: float = 600, cores: Sequence[int] | None = None):
        self.label, self.timeout = label, timeout
        self.cores = None if cores is None else list(cores)
        self.proc: Any = None
        self.conn: Any = None
        self._pid = 0
        self.setup_s, self.threads = 0.0, 0
        #: per round, how long the child waited for its threads to go idle after it (ms)
        self.settle_ms: list[float] = []

    @property
    def pid(self) -> int:
        """The child's process id (kept after it stops, to name it in reports)."""
        return self._pid

    def start(self, job: Callable[..., Loaded], *args: Any, **kwargs: Any) -> Any:
        """Spawn the child, run ``job`` there (it returns a :class:`Loaded`) and return
        its ``result``."""
        self.launch(job, *args, **kwargs)
        return self.ready()

    def launch(self, job: Callable[..., Loaded], *args: Any, **kwargs: Any) -> None:
        """Spawn the child and let it run ``job`` while this process goes on (a child
        that imports torch and loads a program spends seconds there); :meth:`ready`
        waits for it."""
        self._spawn(job, args, kwargs, serve=True)

    def ready(self) -> Any:
        """The ``result`` of the setup job :meth:`launch` gave the child."""
        if self.proc is None:
            raise MeasurementError(f"measuring {self.label}: the worker was not launched")
        result, self.setup_s, self.threads = self._receive()
        return result

    def run(self, job: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``job`` once in a fresh child and return its result (the child exits)."""
        self._spawn(job, args, kwargs, serve=False)
        try:
            return self._receive()
        finally:
            self.close()

    def time(self, protocol: Protocol) -> list[float]:
        """One round in the child: ``warmup`` untimed runs, then ``repeat`` samples (ms)."""
        if self.proc is None:
            raise MeasurementError(f"measuring {self.label}: the worker is not running")
        self.conn.send(("time", protocol))
        samples, waited_s, idle = self._receive()
        self.settle_ms.append(1e3 * waited_s)
        if not idle:
            log.warning(
                "%s: the runtime's threads still used the CPU %.0f ms after its round "
                "(a spin-waiting thread pool?); the runtime timed next may be slowed",
                self.label,
                1e3 * waited_s,
            )
        return samples

    def close(self) -> None:
        """Stop the child (politely, then by force) and release the pipe."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("stop",))
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()
        self.proc = None

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, job: Callable[..., Any], args: tuple, kwargs: dict, serve: bool) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child_end = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_child_main,
            args=(child_end, job, args, kwargs, self.cores, serve),
            name=f"dlas-measure-{self.label}",
        )
        self.proc.start()
        self._pid = int(self.proc.pid)
        child_end.close()  # the child holds the only other end: EOF means it is gone

    def _receive(self) -> Any:
        """The child's next answer, or a :class:`MeasurementError` saying why there is
        none (timed out: the child is killed; crashed; raised)."""
        proc, conn, what = self.proc, self.conn, self.label
        message: tuple[str, Any] | None = None
        deadline = time.monotonic() + self.timeout
        while message is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pid = proc.pid
                self._kill()
                raise MeasurementError(
                    f"measuring {what} timed out after {self.timeout:g} s; child {pid} killed"
                )
            if conn.poll(min(remaining, 1.0)):
                try:
                    message = conn.recv()
                except EOFError:  # child died without sending
                    break
            elif not proc.is_alive() and not conn.poll(0):
                break
        if message is None:
            proc.join(30)
            pid, code = proc.pid, proc.exitcode
            self._kill()
            raise MeasurementError(
                f"measuring {what} crashed: child process {pid} {_describe_exit(code)}"
                "; the generated code or its runtime faulted, so this point has no result"
            )
        status, payload = message
        if status == "error":
            self._kill()
            last = payload.strip().splitlines()[-1] if payload.strip() else "unknown error"
            raise MeasurementError(f"measuring {what} failed in its subprocess: {last}\n{payload}")
        return payload

    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()
        self.proc = None


def measure_in_subprocess(
    job: Callable[..., T],
    *args: Any,
    timeout: float = 600,
    label: str | None = None,
    cores: Sequence[int] | None = None,
    **kwargs: Any,
) -> T:
    """Run ``job(*args, **kwargs)`` in a fresh process and return its result.

    ``job`` must be a module-level function and its arguments and result picklable (the
    child is started with ``spawn``, so it imports ``job``'s module anew and inherits no
    threads or locks from this process). A segfault, abort or ``os._exit`` in the child, a
    Python exception there, or exceeding ``timeout`` seconds (the child is then killed)
    raises :class:`MeasurementError` here; this process is unaffected. ``timeout``,
    ``label`` (the point's name in messages) and ``cores`` (pin the child to them) are not
    passed to ``job``.

    While it runs, this process holds the host's core lock exclusively
    (:mod:`dlas.hardware.cores`), so no other dlas job computes beside a measurement.
    """
    from dlas.hardware.cores import exclusive

    what = label or getattr(job, "__qualname__", repr(job))
    with exclusive():
        return Worker(what, timeout=timeout, cores=cores).run(job, *args, **kwargs)


# ------------------------------------------------------------------------- TVM modules


def _as_list(inputs: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(inputs, np.ndarray):
        return [inputs]
    return [np.asarray(x) for x in inputs]


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, tuple | list) or type(value).__name__ == "Array":
        return [leaf for item in value for leaf in _flatten(item)]
    return [value]


class _LoadedVM:
    """A Relax VM on the device with the inputs set, locally or over an RPC session.

    Use as a context manager: leaving it drops every remote handle and collects the
    reference cycles TVM's RPC objects form. Without that the session outlives the
    measurement, the server (one session at a time) stays busy, and the next request to
    the tracker waits forever.
    """

    def __init__(self, lib_path: str, inputs: list[np.ndarray], device: Device) -> None:
        import tvm
        from tvm import relax

        from dlas.hardware import set_threads
        from dlas.hardware.rpc import configure_remote_threads

        self.session = None
        if device.is_remote:
            self.session = device.session()
            remote_name = f"dlas_{os.getpid()}_{os.path.basename(lib_path)}"
            self.session.upload(lib_path, target=remote_name)
            lib = self.session.load_module(remote_name)
            self.threads = configure_remote_threads(self.session, device.threads)
        else:
            if device.device_type == tvm.cpu(0).dlpack_device_type():
                set_threads(device.threads)
            lib = tvm.runtime.load_module(lib_path)
            self.threads = int(tvm.runtime.num_threads())
        self.dev = device.runtime_device(self.session)
        self.vm = relax.VirtualMachine(lib, self.dev)
        self.set_inputs(inputs)

    def set_inputs(self, inputs: list[np.ndarray]) -> None:
        """Copy inputs to the device (before timing: only the model's own work is timed).
        set_input + invoke_stateful is the form that works over RPC with tuple outputs."""
        import tvm

        self.args = [tvm.runtime.tensor(np.ascontiguousarray(x), self.dev) for x in inputs]
        self.vm.set_input("main", *self.args)

    def __enter__(self) -> _LoadedVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.vm = self.args = self.dev = self.session = None  # type: ignore[assignment]
        gc.collect()

    def run(self) -> None:
        self.vm.invoke_stateful("main")

    def outputs(self) -> list[np.ndarray]:
        return [t.numpy() for t in _flatten(self.vm.get_outputs("main"))]


def run_tvm_module(
    lib_path: str, input_array: np.ndarray | Sequence[np.ndarray], device: Device
) -> np.ndarray:
    """Run an exported Relax module once on ``device`` (locally or over RPC) and return its
    single output, for verification against PyTorch."""
    with _LoadedVM(lib_path, _as_list(input_array), device) as loaded:
        loaded.run()
        outputs = loaded.outputs()
    if len(outputs) != 1:
        raise ValueError(f"{lib_path} returns {len(outputs)} outputs; expected 1 (a classifier)")
    return outputs[0]


def run_tvm_module_batches(
    lib_path: str, batches: Sequence[np.ndarray], device: Device
) -> list[np.ndarray]:
    """Run an exported Relax module on each batch with one load (and, over RPC, one
    session and upload), e.g. to verify a compiled model on a test set; returns the single
    output of each batch."""
    if len(batches) == 0:
        return []
    with _LoadedVM(lib_path, [batches[0]], device) as loaded:
        return _verify_tvm(loaded, lib_path, batches)


def _tvm_samples(loaded: _LoadedVM, protocol: Protocol) -> list[float]:
    """One round with TVM's ``time_evaluator``, on the device itself (remote for
    ``hardware=rpc``: network latency is not counted); it adds one discarded run of its
    own after our warm-up."""
    warm_up(loaded.run, protocol)
    timer = loaded.vm.time_evaluator(
        "invoke_stateful", loaded.dev, number=protocol.number, repeat=protocol.repeat
    )
    return [float(s) * 1e3 for s in timer("main").results]


def _verify_tvm(
    loaded: _LoadedVM, lib_path: str, batches: Sequence[np.ndarray]
) -> list[np.ndarray]:
    outputs: list[np.ndarray] = []
    for batch in batches:
        loaded.set_inputs([batch])
        loaded.run()
        result = loaded.outputs()
        if len(result) != 1:
            raise ValueError(f"{lib_path} returns {len(result)} outputs; expected 1")
        outputs.append(result[0])
    return outputs


def _remote_round(
    lib_path: str, example: np.ndarray, device: Device, protocol: Protocol
) -> list[float]:
    """One round on an RPC device in a session of its own (see :func:`open_tvm`)."""
    with _LoadedVM(lib_path, _as_list(example), device) as loaded:
        return _tvm_samples(loaded, protocol)


def open_tvm(
    lib_path: str, batches: Sequence[np.ndarray], example: np.ndarray, device: Device
) -> Loaded:
    """A :class:`Worker` setup: load the module once, return its output on each
    verification batch, then keep it loaded with ``example`` set for timing rounds.

    On an RPC device the worker holds no session between requests: a TVM RPC server
    serves one session at a time, so a second worker (``measure.compare`` with two TVM
    compilers) would wait for it forever. Each round then opens its own session
    (uploading the library again); the timing itself runs on the board as before.
    """
    if device.is_remote:
        with _LoadedVM(lib_path, [batches[0] if len(batches) else example], device) as loaded:
            outputs = _verify_tvm(loaded, lib_path, batches)
            threads = loaded.threads
        timer = functools.partial(_remote_round, lib_path, example, device)
        return Loaded(outputs, timer, 0.0, threads)
    loaded = _LoadedVM(lib_path, [batches[0] if len(batches) else example], device)
    try:
        outputs = _verify_tvm(loaded, lib_path, batches)
    except BaseException:
        loaded.__exit__()
        raise
    first = time.perf_counter()
    loaded.set_inputs(_as_list(example))
    loaded.run()  # first run on the timed input, untimed
    setup_s = time.perf_counter() - first
    return Loaded(
        outputs,
        functools.partial(_tvm_samples, loaded),
        setup_s,
        loaded.threads,
        close=loaded.__exit__,
    )


def time_tvm_module(
    lib_path: str,
    input_array: np.ndarray | Sequence[np.ndarray],
    device: Device,
    protocol: Protocol = DEFAULT_PROTOCOL,
) -> Latency:
    """Time ``vm["main"]`` of a module exported with ``ex.export_library(lib_path)``.

    Uses TVM's ``time_evaluator`` on the device itself (remote for ``hardware=rpc``: the
    library is uploaded and timed there, so network latency is not counted). ``warmup``
    explicit runs come first; ``time_evaluator`` adds one more discarded run of its own.
    """
    started = time.perf_counter()
    with _LoadedVM(lib_path, _as_list(input_array), device) as loaded:
        for _ in range(protocol.warmup):
            loaded.run()
        setup_s = time.perf_counter() - started
        samples_ms = _tvm_samples(loaded, protocol.but(warmup=0))
        threads = loaded.threads
    return Latency.from_samples(
        samples_ms, number=protocol.number, threads=threads, setup_s=setup_s
    )


def time_tvm_alternating(
    lib_paths: Sequence[str],
    example: np.ndarray,
    device: Device,
    *,
    rounds: int = 2,
    protocol: Protocol = AB_PROTOCOL,
) -> list[list[float]]:
    """Median ms of each library per round, the libraries timed in turn (A B, B A, ...)
    in one process: the fair way to ask which of two builds of one model is faster
    (two TVM modules share one runtime and thread pool; nothing of one lingers into the
    other as torch's OpenMP threads would)."""
    loaded = [open_tvm(path, [], example, device) for path in lib_paths]
    medians: list[list[float]] = [[] for _ in lib_paths]
    try:
        for i in range(rounds):
            order = range(len(loaded)) if i % 2 == 0 else reversed(range(len(loaded)))
            for j in order:
                medians[j].append(float(np.median(loaded[j].timer(protocol))))
    finally:
        for lib in loaded:
            if lib.close is not None:
                lib.close()
    return medians


def verify_and_time_tvm(
    lib_path: str,
    batches: Sequence[np.ndarray],
    example: np.ndarray,
    device: Device,
    protocol: Protocol = DEFAULT_PROTOCOL,
) -> tuple[list[np.ndarray], Latency]:
    """Outputs on the verification batches, then the latency of ``example``: one load of
    the module for both (what :func:`open_tvm` does in a worker, in one go)."""
    loaded = open_tvm(lib_path, batches, example, device)
    try:
        samples = loaded.timer(protocol)
    finally:
        assert loaded.close is not None
        loaded.close()
    latency = Latency.from_samples(
        samples, number=protocol.number, threads=loaded.threads, setup_s=loaded.setup_s
    )
    return loaded.result, latency
