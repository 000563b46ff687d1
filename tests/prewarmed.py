"""Commands started from a process that has already imported torch and ijepa: the tests' ``ijepa`` processes.

An ``ijepa`` command spends 2-3 s of a small machine importing torch and the libraries around it before it does
anything, and the tests start about a hundred of them (the documentation's examples, the kill-and-resume tests). So
they ask a server that imports those modules once and forks a process for each command. The process takes the
command's working folder, environment, arguments and standard streams, runs the console script's ``ijepa.cli.main``
(or a Python script as ``__main__``) as its main program and exits as a fresh process would (non-daemon threads
joined, ``atexit`` handlers run). It is a real process of its own: a test sends it signals by its pid, and its exit
status comes back to the caller. A command whose environment differs from the server's (one that sets a variable
some library reads when it is imported) runs as a fresh process instead, so no command sees a module state its own
process would not have had.

    python tests/prewarmed.py serve SOCKET     # the server; it exits when its parent does
    python tests/prewarmed.py ijepa ARGS...    # `ijepa ARGS...`, through the server named by $IJEPA_PREWARMED
    python tests/prewarmed.py python SCRIPT    # `python SCRIPT`, the same way

and from Python, :func:`launch` (a ``subprocess.Popen``-like handle) or :class:`Servers` (one server for each
environment asked for; the ``prewarmed`` fixture of conftest.py). Only the standard library is imported at the top:
a client starts in tens of milliseconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

# What the commands import, loaded once by the server (a module a command does not use costs it nothing).
PRELOAD = ("numpy", "torch", "torch._dynamo", "ijepa", "ijepa.cli", "ijepa.config", "ijepa.train.loop",
           "ijepa.interop.load", "ijepa.eval.commands", "ijepa.viz.commands", "matplotlib.pyplot", "PIL.Image",
           "safetensors.torch")
# Set by a shell or by pytest for each process or test, or by this harness, and read (if at all) when a command runs,
# not when it imports: not a difference in what its process would have imported (the command gets their values).
PER_PROCESS = {"PWD", "OLDPWD", "SHLVL", "_", "PS1", "PS2", "PS4", "COLUMNS", "LINES", "PYTEST_CURRENT_TEST",
               "IJEPA_PREWARMED"}
MAX_MESSAGE = 1 << 20


def _env_key(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in PER_PROCESS}


# ------------------------------------------------------------------------------------------------ the server


def serve(path: str) -> tuple[dict, list[int]]:
    """Import, then serve requests: each gets a watcher process (forked), which forks the command's process, sends
    its pid, waits for it and sends its exit status. Returns only in a command's process: its request and streams.
    The server itself stays single-threaded, so every fork is of a process with one thread."""
    import importlib

    env = _env_key(dict(os.environ))  # as given: what a fresh process of the command would start with
    for name in PRELOAD:
        importlib.import_module(name)
    parent, watchers = os.getppid(), set()

    def stop(signum, frame):  # the harness stops the server: the commands still running go with it
        for w in watchers:
            try:
                os.killpg(w, signal.SIGKILL)
            except OSError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # watchers are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(2.0)
    print("ready", flush=True)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the harness is gone
                stop(None, None)
            continue
        conn.settimeout(None)
        message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
        request = json.loads(message)
        if _env_key(request["env"]) != env:
            conn.send(b"fresh")
        else:
            watcher = os.fork()
            if watcher == 0:
                listener.close()
                if _watch(conn, fds):
                    return request, fds
            watchers.add(watcher)
        for fd in fds:
            os.close(fd)
        conn.close()


def _watch(conn: socket.socket, fds: list[int]) -> bool:
    """In a watcher: fork the command's process (True there); here send its pid, then its exit status, and exit."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setpgid(0, 0)  # the watcher and its command: one group, which the server can stop whole
    child = os.fork()
    if child == 0:
        conn.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, whatever started the server
        return True
    for fd in fds:
        os.close(fd)
    try:
        conn.send(f"pid {child}".encode())
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        conn.send(str(code).encode())
    finally:
        os._exit(0)


def run_request(request: dict, fds: list[int]) -> int:
    """In the command's process: become the requested command and run it as the main program."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for target, fd in enumerate(fds):
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
    sys.argv = request["argv"]
    if request["kind"] == "python" and sys.argv[0] == "-c":  # python -c CODE ARGS
        code, sys.argv[1:] = sys.argv[1], sys.argv[2:]
        sys.path[0] = ""
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        return 0
    if request["kind"] == "python":
        import runpy

        sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
        runpy.run_path(sys.argv[0], run_name="__main__")
        return 0
    from ijepa.cli import main

    sys.path[0] = os.path.dirname(sys.executable)  # where a console script's own folder would be
    return main()


# ------------------------------------------------------------------------------------------------ the clients


def fresh_command(kind: str, args: list[str]) -> list[str]:
    return [sys.executable, *args] if kind == "python" else [sys.executable, "-m", "ijepa", *args]


class Launched:
    """A command's process started by the server: ``pid``, ``poll``, ``wait``, ``send_signal``, ``kill`` and
    ``returncode`` as a ``subprocess.Popen``'s (the status is -N for a process killed by signal N)."""

    def __init__(self, conn: socket.socket, pid: int, args: list[str]):
        self._conn, self.pid, self.args, self.returncode = conn, pid, args, None

    def poll(self) -> int | None:
        if self.returncode is None:
            self._conn.setblocking(False)
            try:
                self._status(self._conn.recv(16))
            except BlockingIOError:
                pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._conn.setblocking(True)
            self._conn.settimeout(timeout)
            try:
                self._status(self._conn.recv(16))
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def _status(self, message: bytes) -> None:
        if not message:
            raise RuntimeError(f"the prewarmed server lost the process of {self.args}")
        self.returncode = int(message)
        self._conn.close()

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def launch(path: str | None, kind: str, args: list[str], *, stdin=None, stdout=None, stderr=None, env=None,
           cwd=None) -> Launched | subprocess.Popen:
    """``ijepa ARGS`` (kind "ijepa") or ``python SCRIPT ARGS`` / ``python -c CODE ARGS`` (kind "python") through
    the server at ``path``,
    with the given streams (files, or None for this process's), environment and folder; a ``subprocess.Popen`` of a
    fresh process where there is no server or the environment differs from the server's."""
    env = dict(os.environ if env is None else env)
    if path is None:
        return subprocess.Popen(fresh_command(kind, args), stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd)
    if stderr == subprocess.STDOUT:
        stderr = stdout
    streams = [default if s is None else s if isinstance(s, int) else s.fileno()
               for s, default in ((stdin, 0), (stdout, 1), (stderr, 2))]
    assert min(streams) >= 0, "streams are files or file descriptors (no PIPE or DEVNULL)"
    argv = ([os.path.join(os.path.dirname(sys.executable), "ijepa"), *args] if kind == "ijepa" else list(args))
    request = {"kind": kind, "argv": argv, "cwd": os.path.abspath(cwd or os.getcwd()), "env": env}
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(path)
    socket.send_fds(conn, [json.dumps(request).encode()], streams)
    answer = conn.recv(64)
    if answer == b"fresh":
        conn.close()
        return subprocess.Popen(fresh_command(kind, args), stdin=stdin, stdout=stdout, stderr=stderr, env=env,
                                cwd=cwd)
    return Launched(conn, int(answer.split()[1]), args)


class Servers:
    """Servers started on demand, one for each environment asked for (``env=None``: this process's), stopped by
    :meth:`close`: ``ijepa(args, ...)`` and ``python(args, ...)`` take :func:`launch`'s keywords."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix="ijepa-tests-")  # a short path: a socket's is limited to ~100 characters
        self.servers: dict[str, tuple[subprocess.Popen, str]] = {}

    def ijepa(self, args: list[str], **kw) -> Launched | subprocess.Popen:
        return launch(self.path(kw.get("env")), "ijepa", args, **kw)

    def python(self, args: list[str], **kw) -> Launched | subprocess.Popen:
        return launch(self.path(kw.get("env")), "python", args, **kw)

    def path(self, env: dict[str, str] | None) -> str:
        env = dict(os.environ if env is None else env)
        key = json.dumps(_env_key(env), sort_keys=True)
        if key not in self.servers:
            path = os.path.join(self.folder, f"server{len(self.servers)}")
            server = subprocess.Popen([sys.executable, __file__, "serve", path], env=env, stdout=subprocess.PIPE,
                                      text=True)
            if server.stdout.readline() != "ready\n":
                raise RuntimeError("the prewarmed server did not start")
            self.servers[key] = server, path
        return self.servers[key][1]

    def close(self) -> None:
        for server, _ in self.servers.values():
            server.terminate()
            server.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def client(kind: str, args: list[str]) -> int:
    """A shell's ``ijepa ARGS`` (or ``python SCRIPT``): through the server in ``$IJEPA_PREWARMED``, else fresh."""
    path = os.environ.get("IJEPA_PREWARMED")
    if not path:
        os.execv(sys.executable, fresh_command(kind, args))
    proc = launch(path, kind, args)
    for fd in (0, 1, 2):  # the command's process holds the streams; this one only waits for its status
        os.close(fd)
    code = proc.wait()
    return code if code >= 0 else 128 - code  # killed by signal N: 128 + N, as a shell says


if __name__ == "__main__":
    role, rest = sys.argv[1], sys.argv[2:]
    if role == "serve":
        sys.exit(run_request(*serve(rest[0])))
    sys.exit(client(role, rest))
