"""Generated code is contained: one test per attack that got out of the old in-process guard.

Attacks that could harm the test run itself (killing the parent, a child that never exits) run from a
sacrificial "collecting process": a child Python that calls ``run_python`` and reports back, so that an
escape shows up as a failed assertion, not as a killed or hung pytest.

These tests need bubblewrap; where it cannot run they are skipped, unless ``CONTRASTLENS_REQUIRE_SANDBOX=1``
(set by .ci/run), which makes them fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from contrastlens.benchmarks.sandbox import run_python


def _sandbox_or_skip() -> None:
    from contrastlens.benchmarks.sandbox import sandbox_status

    mode, why = sandbox_status()
    if mode is None:
        if os.environ.get("CONTRASTLENS_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"the sandbox cannot run here: {why}")
        pytest.skip(f"the sandbox cannot run here: {why}")


@pytest.fixture(autouse=True)
def _needs_sandbox():
    try:
        _sandbox_or_skip()
    except ImportError:  # the code before the sandbox existed: run the attacks against it anyway
        pass


# A collecting process of its own: reads the candidate program on stdin, replaces HELPER_PID in it with
# its own pid, runs it with run_python and prints one JSON line (if it is still alive to do so).
HELPER = textwrap.dedent(r'''
    import json, os, sys, time
    from contrastlens.benchmarks.sandbox import run_python
    code = sys.stdin.read().replace("HELPER_PID", str(os.getpid()))
    t = time.perf_counter()
    r = run_python(code, timeout=float(sys.argv[1]))
    print(json.dumps({"alive": True, "status": r.status, "stdout": r.stdout, "stderr": r.stderr,
                      "payload": r.payload, "seconds": time.perf_counter() - t}))
''')


def collect_in_child(code: str, *, timeout: float = 5.0, wait: float = 20.0, env: dict | None = None,
                     prefix: list[str] | None = None) -> tuple[dict | None, str]:
    """Run ``code`` through run_python in a separate collecting process; its report (None when it died or
    hung: then it is killed) and its stderr."""
    cmd = [*(prefix or []), sys.executable, "-c", HELPER, str(timeout)]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, start_new_session=True)
    try:
        out, err = p.communicate(code, timeout=wait)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        return None, f"the collecting process hung for {wait} s"
    lines = [x for x in out.splitlines() if x.startswith("{")]
    if p.returncode != 0 or not lines:
        return None, f"the collecting process died (exit status {p.returncode}): {err[-500:]}"
    return json.loads(lines[-1]), err


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line holds ``marker``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def _kill_all(pids: list[int]) -> None:
    for pid in pids:  # leftovers of an escape (the old code): do not leave them running
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# ------------------------------------------------------------------------------------ signals
KILLS = {
    "posix.kill(getppid)": "import os, posix, signal\nposix.kill(os.getppid(), signal.SIGKILL)\n"
                           "posix.kill(HELPER_PID, signal.SIGKILL)\n",
    "ctypes syscall": "import sys\nfor m in ('ctypes', '_ctypes'):\n    sys.modules.pop(m, None)\n"
                      "import ctypes, os\nlibc = ctypes.CDLL(None)\n"
                      "libc.syscall(62, os.getppid(), 9)\nlibc.syscall(62, HELPER_PID, 9)\n"
                      "libc.kill(HELPER_PID, 9)\n",
    "execv kill": "import posix\nposix.execv('/bin/sh', ['sh', '-c', 'kill -9 $PPID; kill -9 HELPER_PID'])\n",
}


@pytest.mark.parametrize("attack", list(KILLS))
def test_candidate_cannot_kill_the_collecting_process(attack):
    # inside the sandbox getppid() is the sandbox's own init; the real collecting process is not visible
    rep, err = collect_in_child(KILLS[attack] + "print('done')\n")
    assert rep is not None and rep["alive"], err
    assert rep["status"] in ("ok", "error")


# ------------------------------------------------------------------------------------ environment
def test_parent_environment_is_not_readable():
    secret = "cl-secret-" + uuid.uuid4().hex
    env = {**os.environ, "CONTRASTLENS_TEST_SECRET": secret}
    code = textwrap.dedent('''
        import glob, os
        seen = [repr(dict(os.environ))]
        for path in [f"/proc/{os.getppid()}/environ", "/proc/HELPER_PID/environ"] + glob.glob("/proc/*/environ"):
            try:
                seen.append(open(path, "rb").read().decode("latin-1"))
            except OSError as e:
                seen.append(f"{path}: {e}")
        print("\\n".join(seen))
    ''')
    rep, err = collect_in_child(code, env=env)
    assert rep is not None, err
    assert secret not in rep["stdout"] + rep["stderr"]
    assert "CONTRASTLENS_TEST_SECRET" not in rep["stdout"]


# ------------------------------------------------------------------------------------ processes
FORK = textwrap.dedent('''
    import posix, sys
    if posix.fork() == 0:                 # a daemon: its own session, stdout still open, sleeps forever
        posix.setsid()
        posix.execv(sys.executable, [sys.executable, "-c",
                    "import sys, time\\ntime.sleep(0.3)\\nopen(sys.argv[1], 'w').write('escaped')\\ntime.sleep(10 ** 6)",
                    "{marker_path}", "{marker}"])
    print("parent done", flush=True)
''')


@pytest.mark.parametrize("main", ["exits", "loops"])
def test_forked_session_leader_dies_with_the_run(tmp_path, main):
    marker = "cl-marker-" + uuid.uuid4().hex
    marker_path = tmp_path / "escaped.txt"
    code = FORK.format(marker=marker, marker_path=marker_path) + ("while True:\n    pass\n" if main == "loops" else "")
    limit = 2.0
    t = time.perf_counter()
    rep, err = collect_in_child(code, timeout=limit, wait=limit + 10)
    took = time.perf_counter() - t
    try:
        assert rep is not None, err
        assert rep["seconds"] < limit + 1.0 and took < limit + 5.0
        assert rep["status"] == ("ok" if main == "exits" else "timeout")
        time.sleep(0.6)  # past the moment the child would write its marker
        assert not marker_path.exists()
        assert processes_with(marker) == []
    finally:
        _kill_all(processes_with(marker))


def test_fork_bomb_hits_the_process_limit():
    code = textwrap.dedent('''
        import json, posix, time
        n, error = 0, None
        try:
            for _ in range(200):
                if posix.fork() == 0:
                    time.sleep(1)
                    posix._exit(0)
                n += 1
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
        print(json.dumps({"forks": n, "error": error}))
    ''')
    r = run_python(code, timeout=10)
    assert r.payload is not None, r.stderr
    assert r.payload["forks"] < 200 and "Resource temporarily unavailable" in (r.payload["error"] or "")
    assert r.seconds < 5


# ------------------------------------------------------------------------------------ files
def test_files_outside_the_sandbox_cannot_be_written_or_deleted(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("original")
    code = textwrap.dedent(f'''
        import json, os, posix, shutil
        tried = {{}}
        for name, act in [("overwrite", lambda: open({str(keep)!r}, "w").write("changed")),
                          ("remove", lambda: os.remove({str(keep)!r})),
                          ("unlink", lambda: posix.unlink({str(keep)!r})),
                          ("create", lambda: open({str(tmp_path / "new.txt")!r}, "w").write("new")),
                          ("rmtree", lambda: shutil.rmtree({str(tmp_path)!r}))]:
            try:
                act()
                tried[name] = "done"
            except Exception as e:
                tried[name] = type(e).__name__
        print(json.dumps(tried))
    ''')
    r = run_python(code, timeout=10)
    assert keep.read_text() == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert r.payload is not None and "done" not in r.payload.values(), r.payload


def test_the_working_folder_is_fresh_and_the_rest_read_only():
    code = textwrap.dedent('''
        import json, os, sys
        out = {"cwd": os.getcwd(), "files": os.listdir("."), "uid": os.getuid()}
        open("scratch.txt", "w").write("ok")
        out["scratch"] = open("scratch.txt").read()
        for p in ("/usr/cl-sandbox-probe", os.path.join(sys.prefix, "cl-sandbox-probe"), "/cl-sandbox-probe"):
            try:
                open(p, "w")
                out[p] = "written"
            except OSError as e:
                out[p] = e.strerror
        print(json.dumps(out))
    ''')
    # (imported first: only the new code runs this, the old one would write where it tries to)
    from contrastlens.benchmarks.sandbox import bound_paths

    r = run_python(code, timeout=10)
    p = r.payload
    assert p is not None, r.stderr
    assert p["files"] == [] and p["scratch"] == "ok" and p["uid"] == 65534
    assert all(v != "written" for k, v in p.items() if k.startswith("/")), p
    assert bound_paths()


def _host_entries(folder: str) -> set[str]:
    """Entries of a host folder that are not on the way to a folder the sandbox binds."""
    try:
        names = set(os.listdir(folder))
    except OSError:
        return set()
    try:
        from contrastlens.benchmarks.sandbox import bound_paths

        on_way = {Path(p).relative_to(folder).parts[0] for p in bound_paths() if p.startswith(folder.rstrip("/") + "/")}
    except ImportError:
        on_way = set()
    return names - on_way


def test_root_and_home_show_nothing_of_the_host():
    home = os.path.expanduser("~")
    code = textwrap.dedent(f'''
        import json, os
        out = {{}}
        for d in ("/root", {home!r}, "/home", "/work", "/etc"):
            try:
                out[d] = os.listdir(d)
            except OSError as e:
                out[d] = type(e).__name__
        print(json.dumps(out))
    ''')
    r = run_python(code, timeout=10)
    assert r.payload is not None, r.stderr
    for d in ("/root", home, "/home", "/work"):
        seen = r.payload[d]
        if isinstance(seen, list):
            assert not set(seen) & _host_entries(d), (d, seen)
    etc = r.payload["/etc"]
    assert not isinstance(etc, list) or not {"passwd", "shadow", "hostname"} & set(etc), etc


# ------------------------------------------------------------------------------------ network
class Listener:
    """A TCP listener on 127.0.0.1 that this test owns: accepts in a thread for a bounded time and counts
    connections; stops by itself."""

    def __init__(self, seconds: float = 15.0):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.stop = threading.Event()
        self.end = time.monotonic() + seconds
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop.is_set() and time.monotonic() < self.end:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


NET = textwrap.dedent('''
    import json, socket, sys
    res = {{}}
    def attempt(name, make):
        try:
            s = make()
            s.settimeout(2)
            s.connect(("127.0.0.1", {port}))
            res[name] = "connected"
        except BaseException as e:
            res[name] = type(e).__name__
    attempt("socket.socket", lambda: socket.socket())
    attempt("socket._socket.socket", lambda: socket._socket.socket())
    for m in ("_socket", "socket"):
        sys.modules.pop(m, None)
    import _socket
    attempt("re-imported _socket", lambda: _socket.socket())
    print(json.dumps(res))
''')


def _no_sys_admin() -> list[str] | None:
    """A command prefix that runs a process as root without CAP_SYS_ADMIN (the capability the old code
    needed for its network namespace), where that can be done here."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    return ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--"]


@pytest.mark.parametrize("how", ["here", "without CAP_SYS_ADMIN"])
def test_no_network_not_even_loopback(how):
    lst = Listener()
    try:
        code = NET.format(port=lst.port)
        if how == "here":
            r = run_python(code, timeout=10)
            res = r.payload
            assert res is not None, r.stderr
        else:
            prefix = _no_sys_admin()
            if prefix is None:
                pytest.skip("needs root and setpriv to drop CAP_SYS_ADMIN")
            rep, err = collect_in_child(code, timeout=10, prefix=prefix)
            assert rep is not None and rep["payload"] is not None, err
            res = rep["payload"]
        assert set(res) == {"socket.socket", "socket._socket.socket", "re-imported _socket"}
        assert "connected" not in res.values(), res
        time.sleep(0.1)
        assert lst.accepted == 0
    finally:
        lst.close()
