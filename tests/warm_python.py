"""``python train.py ARGS`` (or ``evaluate.py``) as a process of its own, without paying the
imports of torch, Lightning and Hydra again each time (several seconds a run on one core).

A server process imports those modules once, in a fresh interpreter that has never run a test;
for every run it forks a child that becomes ``python SCRIPT ARGS``: its own process id, working
directory, environment, ``sys.argv``, stdin (``/dev/null``), stdout and stderr (files), exit code
and signals (a SIGKILL kills it alone), and the script run as ``__main__`` as Python runs it.
What differs from a cold start is only that the modules are already imported.

Tests use :func:`run_python` like ``subprocess.run(..., capture_output=True, text=True)``;
``fresh=True`` starts a real interpreter instead (for what a cold start itself must show).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What train.py and evaluate.py import when they start, then what their jobs import once Hydra
# has configured logging (the training job: Lightning). The order matters: Lightning gives its
# loggers a handler of their own only when it is imported before logging is configured.
PREIMPORT = ("hdreg.apps.train", "hdreg.apps.evaluate")
LATE_IMPORT = ("hdreg.training.job",)

SERVER = r"""
import atexit, json, logging, os, runpy, sys, warnings

replies = os.fdopen(int(sys.argv[1]), "w", buffering=1)
early, late = sys.argv[2].split(","), sys.argv[3].split(",")
for name in early:
    __import__(name)
configured = logging.NullHandler()  # as Hydra's logging set-up is, when main() imports the rest
logging.getLogger().addHandler(configured)
for name in late:
    __import__(name)
logging.getLogger().removeHandler(configured)
replies.write(json.dumps({"ready": os.getpid()}) + "\n")


def child(request):
    code = 1
    try:
        replies.close()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdin = open(os.devnull)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        options = [o for o in request["env"].get("PYTHONWARNINGS", "").split(",") if o]
        warnings._processoptions(options)  # what PYTHONWARNINGS does at start-up (CPython)
        sys.warnoptions[:] = options
        script, *args = request["argv"]
        sys.argv = [script, *args]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:  # as the interpreter turns it into an exit status
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(request)
    replies.write(json.dumps({"pid": pid}) + "\n")
    _, status = os.waitpid(pid, 0)
    replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
"""


class _Server:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hdreg-warm-"))
        read_end, write_end = os.pipe()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
        self.log = open(self.dir / "server.log", "w")  # noqa: SIM115 (open while it runs)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(write_end), ",".join(PREIMPORT), ",".join(LATE_IMPORT)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=self.log, stderr=self.log,
            pass_fds=(write_end,), text=True,
        )  # fmt: skip
        os.close(write_end)
        self.replies = os.fdopen(read_end, "r")
        self.count = 0
        self._reply("ready")

    def _reply(self, key: str) -> int:
        line = self.replies.readline()
        if not line:
            self.log.flush()
            raise RuntimeError(f"warm python server died:\n{(self.dir / 'server.log').read_text()}")
        return json.loads(line)[key]

    def run(self, argv: list[str], cwd: Path, env: dict[str, str], timeout: float):
        self.count += 1
        out, err = self.dir / f"{self.count}.out", self.dir / f"{self.count}.err"
        request = {
            "argv": argv,
            "cwd": str(cwd),
            "env": env,
            "stdout": str(out),
            "stderr": str(err),
        }
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        pid = self._reply("pid")
        timed_out = []

        def kill() -> None:
            timed_out.append(True)
            os.kill(pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            returncode = self._reply("returncode")
        finally:
            timer.cancel()
        if timed_out:
            raise subprocess.TimeoutExpired([sys.executable, *argv], timeout)
        stdout, stderr = out.read_text(), err.read_text()
        out.unlink()
        err.unlink()
        return subprocess.CompletedProcess([sys.executable, *argv], returncode, stdout, stderr)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.replies.close()
        self.log.close()
        for path in self.dir.iterdir():
            path.unlink()
        self.dir.rmdir()


_server: _Server | None = None


def run_python(
    argv: list[str],
    *,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
    timeout: float = 300,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """``python ARGV`` (``ARGV[0]`` a script) in ``cwd`` with environment ``env`` (default: this
    process's), its output captured as text; forked from the warm server unless ``fresh``."""
    env = dict(os.environ if env is None else env)
    if fresh or sys.platform != "linux":  # fork after importing torch: Linux only
        return subprocess.run(
            [sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
    global _server
    if _server is None or _server.proc.poll() is not None:
        _server = _Server()
    try:
        return _server.run([str(a) for a in argv], cwd, env, timeout)
    except subprocess.TimeoutExpired:
        raise
    except BaseException:  # a broken exchange: the next run starts a new server
        _server.proc.kill()
        _server.close()
        _server = None
        raise


def shutdown() -> None:
    """Stop the server (tests/conftest.py calls this when the session ends)."""
    global _server
    if _server is not None:
        _server.close()
        _server = None
