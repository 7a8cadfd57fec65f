"""Run untrusted Python in a sandboxed subprocess.

The child runs in a fresh temporary folder with a minimal environment, in its own process group (killed
as a group on timeout), with resource limits (address space, CPU time, file size, open files) and,
before any user code runs, a guard that disables process creation (``fork``, ``exec``, ``subprocess``,
``os.system``, ...) and networking (``socket``). Where the kernel allows it (root), the child also enters
a new network namespace with no interfaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass

GUARD = textwrap.dedent(
    r'''
    import builtins, os, sys, socket, resource
    def _blocked(*a, **k):
        raise PermissionError("blocked by the contrastlens sandbox")
    for _n in ("fork", "forkpty", "system", "popen", "execv", "execve", "execvp", "execvpe", "execl",
               "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl",
               "spawnle", "spawnlp", "spawnlpe", "posix_spawn", "posix_spawnp", "kill", "killpg",
               "setuid", "setsid", "setpgid", "putenv", "chdir", "fchdir", "chroot", "rmdir", "removedirs"):
        if hasattr(os, _n):
            setattr(os, _n, _blocked)
    import subprocess as _sp
    _sp.Popen = _blocked; _sp.run = _blocked; _sp.call = _blocked
    _sp.check_call = _blocked; _sp.check_output = _blocked; _sp.getoutput = _blocked
    socket.socket = _blocked; socket.create_connection = _blocked; socket.socketpair = _blocked
    try:
        import multiprocessing as _mp
        _mp.Process.start = _blocked
        import multiprocessing.pool as _mpp
        _mpp.Pool.__init__ = _blocked
    except Exception:
        pass
    import shutil as _sh
    _sh.rmtree = _blocked
    for _m in ("ctypes", "_ctypes", "_posixsubprocess", "_socket", "pty"):
        sys.modules[_m] = None
    del _n, _m
    '''
)


@dataclass
class SandboxResult:
    status: str  # "ok", "error", "timeout", "killed"
    stdout: str
    stderr: str
    returncode: int | None
    seconds: float
    payload: dict | None = None  # the JSON the program printed on its last stdout line, if any


def _limits(memory_mb: int, cpu_s: int) -> None:  # runs in the child before exec
    import ctypes
    import resource

    os.setsid()
    mem = memory_mb * 1024 * 1024
    for what, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_DATA, mem), (resource.RLIMIT_CPU, cpu_s),
                      (resource.RLIMIT_FSIZE, 16 * 1024 * 1024), (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(what, (val, val))
        except (ValueError, OSError):
            pass
    try:  # an empty network namespace: no network at all (needs CAP_SYS_ADMIN; best effort)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.unshare(0x40000000)  # CLONE_NEWNET
    except Exception:
        pass


def run_python(code: str, *, timeout: float = 10.0, memory_mb: int = 1024, stdin: str | None = None
               ) -> SandboxResult:
    """Run ``code`` in a sandboxed ``python -I`` subprocess; parse its last stdout line as JSON."""
    with tempfile.TemporaryDirectory(prefix="cl-sandbox-") as tmp:
        path = os.path.join(tmp, "main.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(GUARD + "\n" + code)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONHASHSEED": "0", "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-I", path], cwd=tmp, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: _limits(memory_mb, int(timeout) + 1),
        )
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
            status = "ok" if proc.returncode == 0 else "error"
            if proc.returncode is not None and proc.returncode < 0:
                status = "killed"
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = proc.communicate()
            status = "timeout"
        dt = time.perf_counter() - t0
        try:  # leftovers of the group (a forked child that outlived its parent)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    payload = None
    lines = [x for x in (out or "").splitlines() if x.strip()]
    if lines:
        try:
            payload = json.loads(lines[-1])
        except ValueError:
            payload = None
    return SandboxResult(status, out or "", err or "", proc.returncode, dt, payload)
