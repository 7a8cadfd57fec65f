"""Run untrusted Python (model-written code) in a bubblewrap sandbox.

:func:`run_python` runs a program in a separate process under ``bwrap`` (Debian package ``bubblewrap``):

- its own mount namespace: the system folders (``/usr``, ``/bin``, ``/lib*``) and the Python installation
  bound read-only, nothing else of the host (no home folders, no ``/root``, no host ``/tmp``, no project
  folder); a fresh size-limited tmpfs as the working folder ``/tmp``; a minimal ``/dev``;
- new PID, network (no interfaces but its own loopback), IPC, UTS and (where possible) cgroup
  namespaces, ``/proc`` of the new PID namespace only: host processes cannot be seen, signalled or read;
- an unprivileged uid (65534, "nobody"): as root, bwrap sets up the namespaces and the program drops to
  65534 (all capabilities gone) before any of its code runs; otherwise in a user namespace
  (``--unshare-user --uid 65534``, further user namespaces disabled);
- ``--die-with-parent`` and ``--new-session``; the host environment is not passed (``--clearenv`` and a
  minimal environment; bwrap itself is started with that environment too);
- limits set inside before the program runs: address space, CPU time, file size, number of processes,
  open files, no core dumps.

The program's stdout and stderr go to files of a host-side temporary folder (never a pipe a surviving
descendant could hold open); a timeout kills bwrap and the sandbox's init process, and with them every
process of the PID namespace. What the program wants to report as data it writes to the file descriptor
named by ``$CL_SANDBOX_DATA_FD`` (:attr:`SandboxResult.data`); a caller may watch that channel while the
program runs and stop it early (``on_data``). Nothing the program writes is trusted: verdicts are made by
the caller, outside the sandbox (see :mod:`contrastlens.benchmarks.humaneval`).

Whether bwrap works here is probed once per process (:func:`sandbox_status`). Where it does not,
:func:`run_python` raises :class:`SandboxUnavailable` (a one-line :class:`ItemError`) unless called with
``unsafe=True`` (``--unsafe-exec``): then the program runs in a plain subprocess with the old in-process
guard (:data:`GUARD`) and resource limits only, which is not a security boundary. See docs/security.md.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass

from contrastlens.benchmarks.base import ItemError

log = logging.getLogger(__name__)

#: the uid and gid the sandboxed program runs as ("nobody")
SANDBOX_UID = 65534
#: the environment variable naming the program's data channel (a file descriptor)
DATA_FD_ENV = "CL_SANDBOX_DATA_FD"
#: where the program lies inside the sandbox
PROGRAM = "/sandbox/main.py"
#: the limits inside the sandbox besides address space and CPU time: processes (threads count too),
#: bytes per written file, open files, size of the working tmpfs
MAX_PROCS = 32
MAX_FILE_BYTES = 128 * 1024 * 1024
MAX_OPEN_FILES = 256
TMPFS_BYTES = 64 * 1024 * 1024
#: how much of the program's stdout and stderr is kept (the tail)
KEEP_OUTPUT = 1024 * 1024

UNAVAILABLE = ("code execution needs bubblewrap (apt-get install bubblewrap) and the right to create "
               "namespaces, and the sandbox cannot start here ({why}); or pass --unsafe-exec to run generated "
               "code without a sandbox (an in-process guard only)")

#: the in-process guard of the ``unsafe`` path (kept from before the sandbox): it replaces functions of
#: ``os``, ``socket`` and ``subprocess``, so it stops accidents, not hostile code (``posix``, ``_socket``,
#: re-imports and ``ctypes`` reach the same calls)
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

# Runs first inside the sandbox (``python -c BOOT PROGRAM``): as root (bwrap without a user namespace)
# become nobody, which drops every capability; set the limits; then run the program as __main__. Any
# failure here stops the process before the program's code is even read.
BOOT = textwrap.dedent(
    r'''
    import os, resource, runpy, sys
    if os.getuid() == 0:
        os.setgroups([]); os.setgid({uid}); os.setuid({uid})
    if os.getuid() == 0 or os.geteuid() == 0:
        os._exit(125)
    for _k, _v in ((resource.RLIMIT_AS, {mem}), (resource.RLIMIT_CPU, {cpu}), (resource.RLIMIT_FSIZE, {fsize}),
                   (resource.RLIMIT_NPROC, {nproc}), (resource.RLIMIT_NOFILE, {nofile}), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(_k, (_v, _v))
    del _k, _v
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
    '''
)


class SandboxUnavailable(ItemError):
    """bubblewrap is missing or cannot create its namespaces here (and ``--unsafe-exec`` was not given)."""


@dataclass
class SandboxResult:
    status: str  # "ok", "error", "timeout", "killed", "stopped" (by ``on_data``)
    stdout: str
    stderr: str
    returncode: int | None
    seconds: float
    payload: dict | None = None  # the JSON on the program's last stdout line, if any (the program's claim)
    data: str = ""  # what the program wrote to its data channel ($CL_SANDBOX_DATA_FD; kept without on_data)
    isolated: bool = True  # False: the unsafe path (no sandbox)


# ---------------------------------------------------------------------------------------- bwrap
def _interpreter() -> str:
    """The Python the sandbox runs: the base interpreter of this one (a virtualenv's packages are not
    bound), with the same version, so the programs written for this Python run there."""
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return os.path.realpath(exe)


_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def _under(path: str, roots: tuple[str, ...] | list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def bound_paths() -> list[str]:
    """The host folders visible (read-only) inside the sandbox: the system folders and the Python
    installation."""
    sysdirs = [p for p in _SYSTEM if os.path.lexists(p)]
    out = list(sysdirs)
    real_sys = [os.path.realpath(p) for p in sysdirs]
    exe = _interpreter()
    for p in (sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.path.dirname(exe))):
        p = os.path.realpath(p)
        if p and p != "/" and os.path.isdir(p) and not _under(p, real_sys) and not _under(p, out):
            out = [q for q in out if not _under(q, [p])] + [p]
    return out


@functools.cache
def _features() -> frozenset[str]:
    """The options of this bwrap that the sandbox uses where they exist."""
    exe = shutil.which("bwrap")
    if exe is None:
        return frozenset()
    try:
        text = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10,
                              env={"PATH": "/usr/bin:/bin"}).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(o for o in ("--disable-userns", "--size", "--perms", "--unshare-cgroup-try") if o in text)


def _bwrap_args(mode: str, program: str, env: dict[str, str]) -> list[str]:
    exe = shutil.which("bwrap") or "bwrap"
    feat = _features()
    a = [exe, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--die-with-parent",
         "--new-session"]
    if "--unshare-cgroup-try" in feat:
        a.append("--unshare-cgroup-try")
    if mode == "root":  # bwrap itself creates the namespaces; the program drops to nobody (BOOT)
        a += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        a += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        if "--disable-userns" in feat:
            a.append("--disable-userns")
    perms = (lambda m: ["--perms", m]) if "--perms" in feat else (lambda m: [])
    made: set[str] = {"/"}
    sysdirs = [p for p in _SYSTEM if os.path.lexists(p)]
    for p in bound_paths():
        if p in sysdirs and os.path.islink(p):
            a += ["--symlink", os.readlink(p), p]
            continue
        parts = p.strip("/").split("/")
        for i in range(1, len(parts)):  # the folders above a bound path: searchable by nobody
            anc = "/" + "/".join(parts[:i])
            if anc not in made and not _under(anc, sysdirs):
                a += [*perms("0755"), "--dir", anc]
                made.add(anc)
        a += ["--ro-bind", p, p]
    if os.path.exists("/etc/ld.so.cache"):
        a += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    size = (lambda n: ["--size", str(n)]) if "--size" in feat else (lambda n: [])
    a += ["--proc", "/proc", "--dev", "/dev", *perms("1777"), *size(TMPFS_BYTES), "--tmpfs", "/dev/shm",
          "--remount-ro", "/dev", *perms("1777"), *size(TMPFS_BYTES), "--tmpfs", "/tmp",
          *perms("0755"), "--dir", os.path.dirname(PROGRAM), "--ro-bind", program, PROGRAM,
          "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
    for k, v in env.items():
        a += ["--setenv", k, v]
    return a


def _modes() -> list[str]:
    return (["root"] if os.geteuid() == 0 else []) + ["userns"]


@functools.cache
def sandbox_status() -> tuple[str | None, str]:
    """``(mode, why)``: the way bwrap runs here (``"root"`` or ``"userns"``), probed once per process by
    running a tiny program through the whole sandbox; ``(None, why)`` when it cannot run (``why`` says
    what bwrap said). ``sandbox_status.cache_clear()`` probes again."""
    if shutil.which("bwrap") is None:
        return None, "bwrap not found on PATH"
    why = ""
    for mode in _modes():
        try:
            r = _run(mode, "print('sandbox ok')", timeout=20.0, memory_mb=512, stdin=None, on_data=None)
        except OSError as e:
            why = f"{type(e).__name__}: {e}"
            continue
        if r.status == "ok" and r.stdout.strip() == "sandbox ok":
            return mode, ""
        why = (r.stderr.strip().splitlines() or [f"status {r.status}"])[-1][:200]
    return None, why


def sandbox_available() -> bool:
    """Whether :func:`run_python` can sandbox code here."""
    return sandbox_status()[0] is not None


def require_sandbox() -> str:
    """The sandbox mode, or :class:`SandboxUnavailable` with the one-line reason."""
    mode, why = sandbox_status()
    if mode is None:
        raise SandboxUnavailable(UNAVAILABLE.format(why=why or "it did not run"))
    return mode


# ---------------------------------------------------------------------------------------- running
def _limits(memory_mb: int, cpu_s: int) -> None:  # the unsafe path: runs in the child before exec
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


def _tail(path: str) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        n = f.tell()
        f.seek(max(0, n - KEEP_OUTPUT))
        return f.read().decode("utf-8", "replace")


def _child_pid(info_r: int, bwrap_pid: int) -> int | None:
    """The host pid of the sandbox's init process from bwrap's ``--info-fd`` (only bwrap writes there; it
    is checked to be bwrap's child anyway)."""
    try:
        raw = os.read(info_r, 65536)
        pid = int(json.JSONDecoder().raw_decode(raw.decode("utf-8", "replace").lstrip())[0]["child-pid"])
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        return pid if ppid == bwrap_pid else None
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _pidfd(pid: int) -> int | None:
    """A pidfd of ``pid`` (readable once it has exited), None where the kernel or Python has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _wait_exit(pidfd: int | None, pid: int, seconds: float) -> None:
    """Wait until ``pid`` (not a child of ours) has exited, ``seconds`` at most. The init of a PID namespace
    exits only after every other process of the namespace is gone."""
    end = time.monotonic() + seconds
    if pidfd is not None:
        select.select([pidfd], [], [], seconds)
        return
    while not _gone(pid) and time.monotonic() < end:
        time.sleep(0.002)


def _kill(proc: subprocess.Popen, init_pid: int | None, init_fd: int | None) -> None:
    """Kill the sandbox: bwrap's process group and the init of its PID namespace (whose death takes every
    process of the namespace with it); waits until they are gone (2 s at most)."""
    for target in ((lambda: os.killpg(proc.pid, signal.SIGKILL)),
                   (lambda: signal.pidfd_send_signal(init_fd, signal.SIGKILL) if init_fd is not None
                    else os.kill(init_pid, signal.SIGKILL) if init_pid else None)):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()
    if init_pid:
        _wait_exit(init_fd, init_pid, 2.0)


def _run(mode: str | None, code: str, *, timeout: float, memory_mb: int, stdin: str | None,
         on_data: Callable[[list[str]], bool] | None) -> SandboxResult:
    """One run: ``mode`` ``"root"``/``"userns"`` (bwrap) or None (the unsafe path)."""
    with tempfile.TemporaryDirectory(prefix="cl-sandbox-") as tmp:
        prog = os.path.join(tmp, "main.py")
        with open(prog, "w", encoding="utf-8") as f:
            f.write(code if mode else GUARD + "\n" + code)
        os.chmod(prog, 0o644)
        if "--perms" not in _features():  # the folder bwrap makes above PROGRAM copies this one's mode
            os.chmod(tmp, 0o711)
        with open(os.path.join(tmp, "stdin"), "w", encoding="utf-8") as f:
            f.write(stdin or "")
        data_path = os.path.join(tmp, "data")
        data_fd = os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
               "OMP_NUM_THREADS": "1", DATA_FD_ENV: str(data_fd)}
        info_r = info_w = -1
        if mode:
            env.update(HOME="/tmp", TMPDIR="/tmp")
            info_r, info_w = os.pipe()
            os.set_blocking(info_r, False)
            boot = BOOT.format(uid=SANDBOX_UID, mem=memory_mb * 1024 * 1024, cpu=int(math.ceil(timeout)) + 1,
                               fsize=MAX_FILE_BYTES, nproc=MAX_PROCS, nofile=MAX_OPEN_FILES)
            cmd = [*_bwrap_args(mode, prog, env), "--info-fd", str(info_w), "--",
                   _interpreter(), "-s", "-P", "-c", boot, PROGRAM]
            popen_env = {"PATH": env["PATH"]}  # bwrap's own environment (/proc/1/environ inside)
            cwd, pre = tmp, None
            fds: tuple[int, ...] = (data_fd, info_w)
        else:
            work = os.path.join(tmp, "work")
            os.mkdir(work)
            env.update(HOME=work, TMPDIR=work)
            cmd = [sys.executable, "-s", "-P", prog]  # not -I: PYTHONHASHSEED counts (the env is ours)
            popen_env, cwd, fds = env, work, (data_fd,)
            pre = functools.partial(_limits, memory_mb, int(timeout) + 1)
        status = ""
        t0 = time.perf_counter()
        with open(os.path.join(tmp, "stdin"), "rb") as fin, open(os.path.join(tmp, "stdout"), "wb") as fout, \
                open(os.path.join(tmp, "stderr"), "wb") as ferr, open(data_path, "rb") as fdata:
            try:
                proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=cwd, env=popen_env,
                                        pass_fds=fds, start_new_session=mode is not None, preexec_fn=pre)
            finally:
                os.close(data_fd)
                if info_w >= 0:
                    os.close(info_w)
            buf, chunks = b"", []
            deadline = t0 + timeout
            poll = 0.002
            exit_fd = _pidfd(proc.pid)
            try:
                while True:
                    wait = max(0.0, min(poll, deadline - time.perf_counter()))
                    if exit_fd is not None:  # wakes up at once when bwrap exits
                        select.select([exit_fd], [], [], wait)
                        exited = proc.poll() is not None
                    else:
                        try:
                            proc.wait(timeout=wait)
                            exited = True
                        except subprocess.TimeoutExpired:
                            exited = False
                    poll = min(poll * 2, 0.02)
                    new = fdata.read()
                    if new:
                        if on_data is None:
                            chunks.append(new)
                        else:
                            lines = (buf + new).split(b"\n")
                            buf = lines.pop()
                            if lines and on_data([x.decode("utf-8", "replace") for x in lines]):
                                status = "stopped"
                                break
                    if exited:
                        break
                    if time.perf_counter() >= deadline:
                        status = "timeout"
                        break
            finally:
                if exit_fd is not None:
                    os.close(exit_fd)
                if proc.returncode is None:  # stopped, timed out, or an exception here: kill it all
                    if mode:
                        init_pid = _child_pid(info_r, proc.pid)
                        init_fd = _pidfd(init_pid) if init_pid else None
                        try:
                            _kill(proc, init_pid, init_fd)
                        finally:
                            if init_fd is not None:
                                os.close(init_fd)
                    else:
                        try:
                            os.killpg(proc.pid, signal.SIGKILL)
                        except (ProcessLookupError, PermissionError):
                            pass
                        proc.wait()
                elif not mode:
                    try:  # leftovers of the group (a forked child that outlived its parent)
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                if info_r >= 0:
                    os.close(info_r)
            dt = time.perf_counter() - t0
            rest = fdata.read()
            if rest:
                if on_data is None:
                    chunks.append(rest)
                elif not status:
                    lines = (buf + rest).split(b"\n")
                    if lines and lines[-1] == b"":
                        lines.pop()
                    if lines:
                        on_data([x.decode("utf-8", "replace") for x in lines])
            elif on_data is not None and buf and not status:
                on_data([buf.decode("utf-8", "replace")])
        out, err = _tail(os.path.join(tmp, "stdout")), _tail(os.path.join(tmp, "stderr"))
    rc = proc.returncode
    if not status:
        status = "ok" if rc == 0 else "error"
        if rc is not None and (rc < 0 or (mode and rc > 128)):
            status = "killed"
    payload = None
    lines_out = [x for x in out.splitlines() if x.strip()]
    if lines_out:
        try:
            payload = json.loads(lines_out[-1])
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            payload = None
    data = b"".join(chunks).decode("utf-8", "replace")
    return SandboxResult(status, out, err, rc, dt, payload, data, isolated=mode is not None)


_warned_unsafe = False


def run_python(code: str, *, timeout: float = 10.0, memory_mb: int = 1024, stdin: str | None = None,
               unsafe: bool = False, on_data: Callable[[list[str]], bool] | None = None) -> SandboxResult:
    """Run the Python program ``code`` in the sandbox (see the module docstring); ``stdin``: its standard
    input. ``timeout``: wall-clock seconds for the whole run. ``on_data(lines)``: called with each batch
    of complete lines the program writes to its data channel while it runs; returning True stops (kills)
    the run (status ``"stopped"``). Raises :class:`SandboxUnavailable` when bwrap cannot run here, unless
    ``unsafe`` (then: a plain subprocess with the in-process guard, a warning logged once)."""
    global _warned_unsafe
    if unsafe:
        if not _warned_unsafe:
            log.warning("--unsafe-exec: generated code runs WITHOUT the bubblewrap sandbox (an in-process guard "
                        "and resource limits only; hostile code can escape it)")
            _warned_unsafe = True
        mode = None
    else:
        mode = require_sandbox()
    return _run(mode, code, timeout=timeout, memory_mb=memory_mb, stdin=stdin, on_data=on_data)
