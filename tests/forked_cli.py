"""``edgeseg ARGS`` in a process of its own, fast: the one helper of the command-line tests.

A fresh ``python -m edgeseg.cli`` spends seconds importing torch. :class:`ForkServer` starts one
helper process that imports torch (and nothing of edgeseg or click), then forks one child per
command: the child runs ``edgeseg.cli`` as ``__main__`` exactly as ``python -m`` does (SystemExit and
uncaught exceptions handled the way the interpreter does), with stdin from /dev/null, its own
stdout/stderr files, an alarm after ``timeout_s`` and optionally a cap on the size of the files it
writes (RLIMIT_FSIZE: a disk that fills up). The helper reports the child's pid at once (so a test
can signal a running command) and its exit status when it ends. :func:`fresh_run` runs a command
in a fresh interpreter instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_SERVER = r"""
import json, os, resource, runpy, signal, sys
import torch, torch._dynamo
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(req["cwd"])
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                                    (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                    (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                os.dup2(os.open(path, flags, 0o644), fd)
            if req.get("fsize"):
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
            signal.alarm(req["timeout"])
            sys.argv = ["edgeseg", *req["args"]]
            try:
                runpy.run_module("edgeseg.cli", run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
            except BaseException:
                sys.excepthook(*sys.exc_info())
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code & 0xFF)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@dataclass
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def code(self) -> int:
        return self.returncode

    def __str__(self) -> str:
        return f"edgeseg {' '.join(self.args)} -> {self.returncode}\n--stdout--\n{self.stdout}--stderr--\n{self.stderr}"

    __repr__ = __str__


def fresh_run(args: tuple[str, ...], cwd: Path, timeout_s: int) -> Run:
    """``python -m edgeseg.cli ARGS`` in a fresh interpreter."""
    proc = subprocess.run([sys.executable, "-m", "edgeseg.cli", *args], capture_output=True, text=True, cwd=cwd,
                          stdin=subprocess.DEVNULL, timeout=timeout_s)
    return Run(args, proc.returncode, proc.stdout, proc.stderr)


class ForkServer:
    """Runs ``edgeseg ARGS`` in children forked from one helper that has imported torch."""

    def __init__(self, workdir: Path, timeout_s: int):
        self.workdir, self.timeout_s, self.count = workdir, timeout_s, 0
        self.preload_stderr = ""  # what importing torch printed (a real run would print it too)
        self._server_err = workdir / "server.stderr"
        with open(self._server_err, "w") as err:
            self.server = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=err, text=True, cwd=workdir)
        self.ready = False

    def _reply(self) -> dict:
        line = self.server.stdout.readline()
        assert line, f"the fork helper died:\n{self._server_err.read_text()}"
        return json.loads(line)

    def __call__(self, *args, cwd: Path | None = None, fsize: int | None = None,
                 during: Callable[[int], None] | None = None) -> Run:
        """The command's exit status and output; ``during(pid)`` is called while it runs."""
        if not self.ready:
            assert self._reply() == {"ready": True}
            self.preload_stderr = self._server_err.read_text()
            self.ready = True
        args = tuple(str(a) for a in args)
        self.count += 1
        out, err = self.workdir / f"run{self.count}.stdout", self.workdir / f"run{self.count}.stderr"
        request = {"args": args, "cwd": str(cwd or self.workdir), "stdout": str(out), "stderr": str(err),
                   "timeout": self.timeout_s, "fsize": fsize}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        pid = self._reply()["pid"]
        if during is not None:
            during(pid)
        code = self._reply()["status"]
        return Run(args, code, out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=30)
