"""TVM RPC for layer 6: measure on a board while compiling on this machine.

Three things TVM's own client does not do well for a sweep:

* fail fast: ``tvm.rpc.connect_tracker`` retries a refused connection for 60 s and
  ``TrackerSession.request`` waits forever for a key nobody serves. :func:`check_tracker`
  and :func:`wait_for_key` bound both, and name the address and the keys that are served.
* one tracker + server on loopback (:class:`LocalRPC`), so the RPC path is exercised on a
  single machine by tests and by ``hardware=rpc`` demos. The tracker and server are TVM's
  own, each in its child process (a TVM ``PopenWorker``); they are started concurrently
  because each child spends most of its start-up importing TVM.
* threads on the remote: the server's thread pool is sized by its own ``TVM_NUM_THREADS``
  and TVM halves the core count by default on x86 (it assumes hyper-threading), so
  :func:`configure_remote_threads` reports what the remote really uses.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dlas.errors import UserError
from dlas.hardware.threads import children_threads

DEFAULT_RPC_KEY = "dlas"


class HardwareUnavailableError(UserError, RuntimeError):
    """The configured hardware cannot be used: no GPU, tracker unreachable, key not served.
    The message says what to start or set, so the entry points print it as one line."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_tracker(host: str, port: int, timeout: float = 10.0) -> dict[str, Any]:
    """Connect to a TVM RPC tracker and return its summary (``queue_info``,
    ``server_info``); every socket operation is bounded by ``timeout`` seconds.

    Raises :class:`HardwareUnavailableError` naming ``host:port`` when nothing listens there,
    the address does not resolve, or the peer is not a TVM tracker.
    """
    from tvm.rpc import base

    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            magic = struct.unpack("<i", base.recvall(sock, 4))[0]
            if magic != base.RPC_TRACKER_MAGIC:
                raise HardwareUnavailableError(
                    f"hardware=rpc: {where} answered but is not a TVM RPC tracker"
                )
            base.sendjson(sock, [base.TrackerCode.SUMMARY])
            reply = base.recvjson(sock)
    except HardwareUnavailableError:
        raise
    except (OSError, struct.error) as err:
        raise HardwareUnavailableError(
            f"hardware=rpc: cannot reach a TVM RPC tracker at {where} ({err}); start one with "
            f"`python -m tvm.exec.rpc_tracker --host {host} --port {port}` or set "
            "hardware.host / hardware.port"
        ) from err
    if not reply or reply[0] != base.TrackerCode.SUCCESS:
        raise HardwareUnavailableError(f"hardware=rpc: tracker at {where} replied {reply!r}")
    return dict(reply[1])


def served_keys(summary: dict[str, Any]) -> list[str]:
    """Keys of the servers registered with a tracker (``server:<key>`` in its summary)."""
    keys = {str(info.get("key", "")).split(":", 1)[-1] for info in summary.get("server_info", [])}
    return sorted(k for k in keys if k)


def wait_for_key(host: str, port: int, key: str, timeout: float = 10.0) -> dict[str, Any]:
    """Wait until a server with ``key`` is registered with the tracker; a freshly started
    server needs a few seconds. Raises :class:`HardwareUnavailableError` listing the keys
    that are served when ``key`` does not appear within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        summary = check_tracker(host, port, timeout=max(1.0, min(timeout, 10.0)))
        if key in served_keys(summary):
            return summary
        if time.monotonic() >= deadline:
            keys = ", ".join(served_keys(summary)) or "none"
            raise HardwareUnavailableError(
                f"hardware=rpc: no RPC server with key {key!r} is registered with the tracker "
                f"at {host}:{port} after {timeout:g} s (keys served: {keys}); start one with "
                f"`python -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}`"
            )
        time.sleep(0.2)


def request_session(host: str, port: int, key: str, *, session_timeout: float = 0) -> Any:
    """An ``RPCSession`` on a server with ``key`` (``session_timeout`` 0 = no limit)."""
    from tvm import rpc

    wait_for_key(host, port, key)
    tracker = rpc.connect_tracker(host, port)
    try:
        return tracker.request(key, priority=1, session_timeout=session_timeout)
    finally:
        tracker.close()


def configure_remote_threads(session: Any, threads: int) -> int:
    """Ask the remote runtime for ``threads`` workers and return what it really uses.

    ``runtime.config_threadpool`` can lower the count but not raise it above the server's
    own limit (its ``TVM_NUM_THREADS``, else half the cores on x86), and a CPU list cannot
    cross RPC; so a shortfall is reported on stderr instead of silently measured.
    """
    if threads > 0:
        session.get_function("runtime.config_threadpool")(1, threads)
    used = int(session.get_function("runtime.NumThreads")())
    if threads > 0 and used != threads:
        print(
            f"dlas: the RPC server runs {used} TVM thread(s), not the {threads} requested; "
            f"start it with TVM_NUM_THREADS={threads}",
            file=sys.stderr,
        )
    return used


@dataclass
class LocalRPC:
    """A TVM RPC tracker and one server registered with ``key``, both on loopback.

    Use as a context manager; :meth:`stop` ends exactly the two child processes it started
    (and the per-session children the server forked), by their pids.
    """

    key: str = DEFAULT_RPC_KEY
    threads: int = 0
    host: str = "127.0.0.1"
    timeout: float = 120.0
    port: int = 0
    server_port: int = 0
    _tracker: Any = field(default=None, repr=False)
    _server: Any = field(default=None, repr=False)

    def start(self) -> LocalRPC:
        """Start tracker and server, and wait until the server is registered."""
        from tvm.rpc.server import Server
        from tvm.rpc.tracker import Tracker

        port = free_port(self.host)
        failure: list[BaseException] = []

        def start_tracker() -> None:
            try:
                self._tracker = Tracker(self.host, port=port, port_end=port + 1, silent=True)
            except BaseException as err:  # reported in the calling thread
                failure.append(err)

        tracker_thread = threading.Thread(target=start_tracker, daemon=True)
        tracker_thread.start()
        # The server child inherits the environment at start-up: that is where its thread
        # pool size comes from (config_threadpool cannot raise it later over RPC).
        # threads 0 = every core, as for hardware=cpu (TVM's own default is half of them).
        with children_threads(self.threads):
            server_port = free_port(self.host)
            self._server = Server(
                self.host,
                port=server_port,
                port_end=server_port + 1,
                tracker_addr=(self.host, port),
                key=self.key,
                silent=True,
            )
            self.server_port = int(self._server.port)
        tracker_thread.join(self.timeout)
        if failure or self._tracker is None:
            self.stop()
            raise HardwareUnavailableError(f"could not start a local RPC tracker: {failure}")
        self.port = int(self._tracker.port)
        try:
            wait_for_key(self.host, self.port, self.key, timeout=self.timeout)
        except HardwareUnavailableError:
            self.stop()
            raise
        return self

    @property
    def pids(self) -> dict[str, int | None]:
        """The child processes' pids (``None`` once stopped)."""

        def pid(handle: Any) -> int | None:
            proc = getattr(getattr(handle, "proc", None), "_proc", None)
            return None if proc is None else int(proc.pid)

        return {"tracker": pid(self._tracker), "server": pid(self._server)}

    def stop(self) -> None:
        """Stop the server, then the tracker (TVM's terminate: by pid, children too)."""
        if self._server is not None:
            self._server.terminate()
            self._server = None
        if self._tracker is not None:
            self._tracker.terminate()
            self._tracker = None

    def __enter__(self) -> LocalRPC:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
