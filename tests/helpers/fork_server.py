"""A warm start for entry-point processes in tests: ``python -m lungexp.<name> ...`` as a forked child of a
server that has already imported what the entry points import (torch, Lightning, MLflow, Hydra: ~5 s of every
fresh process).

The server (``python -m tests.helpers.fork_server SOCKET``) imports, prints ``ready``, then takes one request
per connection: the module, its arguments, environment and working directory, with the client's stdout and
stderr passed along as file descriptors. For each it forks a child that takes those as its stdout and stderr
(stdin: /dev/null), sets argv, environment and working directory, and runs the module as ``__main__`` with
:mod:`runpy`, as ``python -m`` does. The child ends as the interpreter would end it (the traceback of an
uncaught exception and status 1, or the status of ``SystemExit``; non-daemon threads joined, atexit handlers
run, output flushed), then leaves with ``os._exit``: tearing down the modules inherited from the server would
write to every page of their memory (copy-on-write, seconds a child).
The server answers with the child's pid, then with its exit status as :mod:`subprocess` reports it (negative:
killed by that signal).

The server starts no thread and runs no tensor operation before it forks, so a child inherits no thread pool
(OpenMP) and no lock held by another thread, and it never imports the entry points themselves, so each child
runs its module's code fresh. What a child does share with its siblings: the interpreter's hash seed and the
seeds torch and numpy drew at import (runs seed both; Python's ``random`` reseeds itself after a fork).
Environment variables are read at each child's run, except those read at interpreter start or import
(``PYTHONUNBUFFERED``, ``PYTHONHASHSEED``, thread counts): the server starts with the environment
:func:`tests.helpers.cli.entry_point_env` gives, and requests may change only others.

Not for tests about the process itself (signals, process trees, DDP re-launches, sweeps that pickle
``__main__``): those start a real interpreter.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import io
import json
import logging
import os
import pkgutil
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

MAX_REQUEST_BYTES = 1 << 20  # one request: arguments and a copy of the environment
POLL_S = 0.05  # how often the server looks for finished children


@dataclass(frozen=True)
class Request:
    module: str
    args: list[str]
    env: dict[str, str]
    cwd: str


# --------------------------------------------------------------------------------------------------
# The server


def _import_what_entry_points_import() -> None:
    """Every ``lungexp`` module but the entry points (the top-level modules), and through them the libraries.

    An entry point imports Lightning only after Hydra has given the root logger its handlers, and Lightning
    gives its loggers a stderr handler of their own (and stops them propagating) only when the root logger has
    none: a stand-in root handler while importing keeps its messages going where Hydra sends them.
    """
    import lungexp

    stand_in = logging.NullHandler()
    logging.getLogger().addHandler(stand_in)
    try:
        for info in pkgutil.walk_packages(lungexp.__path__, "lungexp."):
            if info.name.count(".") > 1 or info.ispkg:
                importlib.import_module(info.name)
    finally:
        logging.getLogger().removeHandler(stand_in)


def serve(socket_path: str) -> Request:
    """Serve until stdin closes; returns only in a forked child, with the request it is to run."""
    _import_what_entry_points_import()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(socket_path)
    listener.listen(16)
    gc.freeze()  # children's garbage collections leave the inherited objects (and their pages) alone
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}  # child pid -> the connection its status goes to
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [], POLL_S)
        if sys.stdin in readable and not sys.stdin.readline():  # the client closed it: stop
            for connection in waiting.values():
                connection.close()
            sys.exit(0)
        if listener in readable:
            connection, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(connection, MAX_REQUEST_BYTES, 2)
            pid = os.fork()
            if pid == 0:
                for other in (listener, connection, *waiting.values()):
                    other.close()
                return _take_over(Request(**json.loads(message)), fds)
            for fd in fds:
                os.close(fd)
            connection.send(json.dumps({"pid": pid}).encode())
            waiting[pid] = connection
        _report_finished(waiting)


def _report_finished(waiting: dict[int, socket.socket]) -> None:
    while waiting:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        connection = waiting.pop(pid)
        try:
            connection.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode())
        except OSError:  # the client gave up (its timeout)
            pass
        connection.close()


def _take_over(request: Request, fds: list[int]) -> Request:
    """In the child: the request's stdin (/dev/null), stdout, stderr, environment and working directory."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    for source, target in ((devnull, 0), *zip(fds, (1, 2), strict=True)):
        os.dup2(source, target)
        os.close(source)
    os.environ.clear()
    os.environ.update(request.env)
    os.chdir(request.cwd)
    sys.path[0] = request.cwd  # as `python -m` from that folder
    return request


def run_as_main(request: Request) -> int:
    """``python -m <module> <args>`` (runpy sets ``sys.argv[0]`` to the module's file, as ``-m`` does); returns
    the exit status the interpreter would give it."""
    sys.argv = ["-m", *request.args]
    try:
        runpy.run_module(request.module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        return _system_exit_status(stop.code)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        return -signal.SIGINT  # the interpreter ends itself with SIGINT (see `exit`)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def _system_exit_status(code: object) -> int:
    """As the interpreter reads ``SystemExit.code``: None is 0, an int is itself, anything else is printed, 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_as_the_interpreter_does(status: int) -> None:
    """Join the non-daemon threads, run the atexit handlers, flush, then leave at once: the interpreter's module
    teardown would write to every page of the heap inherited from the server (copy-on-write, seconds)."""
    threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter runs first at exit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    os._exit(status & 0xFF)


# --------------------------------------------------------------------------------------------------
# The client


class ForkServer:
    """A started server; :meth:`run` is ``subprocess.run(capture_output=True, text=True)`` for a module."""

    def __init__(self, socket_path: Path, env: dict[str, str], cwd: Path) -> None:
        self.socket_path = socket_path
        self.process = subprocess.Popen([sys.executable, "-m", __name__, str(socket_path)], cwd=cwd, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self._ready = False
        self._starting = threading.Lock()  # tests call run() from several threads; one reads the ready line

    def _wait_until_ready(self) -> None:
        """Its imports print nothing: a child's output must be all the entry point's own."""
        with self._starting:
            if not self._ready:
                assert self.process.stdout
                line = self.process.stdout.readline()
                if line != "ready\n":
                    rest = line + self.process.stdout.read() if self.process.poll() is not None else line
                    raise AssertionError(f"the fork server did not start cleanly (exit {self.process.poll()}):\n"
                                         f"{rest}")
                self._ready = True

    def run(self, module: str, args: list[str], *, env: dict[str, str], cwd: Path,
            timeout: float, stderr_to_stdout: bool = False) -> subprocess.CompletedProcess:
        """Run ``python -m module *args`` in a forked child; on ``timeout`` kill it and raise as subprocess does.
        ``stderr_to_stdout``: both into one file, interleaved as a terminal shows them (``stderr`` is then empty)."""
        import tempfile

        self._wait_until_ready()
        request = json.dumps({"module": module, "args": list(args), "env": env, "cwd": str(cwd)}).encode()
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr, \
                socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as connection:
            connection.connect(str(self.socket_path))
            socket.send_fds(connection, [request], [stdout.fileno(), (stdout if stderr_to_stdout else stderr).fileno()])
            pid = json.loads(connection.recv(MAX_REQUEST_BYTES))["pid"]
            connection.settimeout(timeout)
            try:
                returncode = json.loads(connection.recv(MAX_REQUEST_BYTES))["returncode"]
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired([module, *args], timeout) from None
            outputs = []
            for handle in (stdout, stderr):  # decoded as subprocess's text mode does (universal newlines)
                handle.seek(0)
                outputs.append(io.TextIOWrapper(handle, encoding="utf-8", errors="replace").read())
        return subprocess.CompletedProcess(["-m", module, *args], returncode, *outputs)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=30)


if __name__ == "__main__":
    exit_as_the_interpreter_does(run_as_main(serve(sys.argv[1])))
