"""Run model-written code in a separate, limited process.

What is enforced, and how (the tests in ``tests/test_sandbox.py`` check each one with a hostile program):

* **Separate process, wall-clock timeout**: ``python -I`` (isolated mode: no user site, no ``PYTHON*``
  variables, script dir not on ``sys.path`` beyond its own) in a new session; at the deadline the whole
  process group is killed, and so is every process still running under the sample's uid.
* **Resource limits** (``setrlimit`` in the launcher, inherited by children): CPU time, address space
  (memory), file size (also caps stdout/stderr, which go to files), open files, no core dumps, and the
  number of processes.
* **Privilege drop** (when the evaluator runs as root and the sandbox uid can run an interpreter): each
  worker slot runs under its own unused uid (never a real account). This is what makes ``RLIMIT_NPROC``
  bite (the kernel exempts root from it), lets the evaluator kill every leftover process of a sample
  atomically (``kill(-1)`` from that uid, which a fork bomb cannot outrun), and confines writes: the
  sample owns only its fresh working directory; the rest of the file system is read-only to it except the
  world-writable temporary folders (``/tmp``, ``/var/tmp``, ``/dev/shm``), where whatever it leaves is
  deleted after the run. Without root, processes run as the evaluator's own user: the limits still
  apply (except ``RLIMIT_NPROC`` when that user is root, which the kernel exempts), writes are confined
  only by ``RLIMIT_FSIZE`` and the user's own permissions, and leftovers that left the process group are
  found by a per-run token in their inherited environment (best effort: a process that rewrites its
  environment block escapes it). ``Sandbox.isolation`` says which case applies; reports record it.
* **No network** where the platform allows: a new, empty network namespace (``unshare(CLONE_NEWNET)``,
  or with ``CLONE_NEWUSER`` when not root). If neither works, ``isolation["network"]`` is False.
* **Scrubbed environment**: only PATH, LANG, HOME/TMPDIR (= the working directory), PYTHONHASHSEED and
  thread-count variables; nothing inherited.
* **Output cap**: stdout and stderr go to files bounded by the file-size limit; a program that prints
  forever fails with "output limit exceeded" instead of filling memory or disk.

Not enforced: a seccomp filter (system calls are not restricted) and disk use through many small files
inside the working directory (bounded in practice by the timeout and RLIMIT_FSIZE per file).
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

LAUNCHER = Path(__file__).resolve().parent / "_launch.py"
LAUNCH_FAILED = 111
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
STATUSES = ("passed", "failed", "timeout", "error")
MARKER = "REMASK_SANDBOX_RUN"  # a random per-run token in the environment: finds leftovers without a uid

_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()
_probe_cache: dict[tuple, dict] = {}


@dataclass
class Limits:
    """Per-sample limits. ``cpu_s`` defaults to the wall timeout rounded up, plus one second."""

    timeout_s: float = 5.0
    cpu_s: int | None = None
    memory_mb: int = 2048
    file_size_mb: int = 16
    max_processes: int = 64
    max_open_files: int = 256
    keep_stdout: int = 2000  # characters of stdout kept in the result (the head)
    keep_stderr: int = 4000  # characters of stderr kept (the tail, where the traceback ends)

    @property
    def cpu_limit(self) -> int:
        return int(self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1)

    def rlimits(self) -> dict[str, int | list[int]]:
        # CPU: SIGXCPU at the soft limit (reported as a timeout), SIGKILL one second later if ignored.
        return {"RLIMIT_CPU": [self.cpu_limit, self.cpu_limit + 1], "RLIMIT_AS": self.memory_mb << 20,
                "RLIMIT_FSIZE": self.file_size_mb << 20, "RLIMIT_NOFILE": self.max_open_files,
                "RLIMIT_CORE": 0, "RLIMIT_NPROC": self.max_processes}


@dataclass
class ExecResult:
    status: str  # passed | failed | timeout | error
    reason: str
    returncode: int | None
    duration_s: float
    stdout: str = ""
    stderr: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return asdict(self)


def _env(work: str, token: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": work,
            "TMPDIR": work, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", MARKER: token}


def _slot_uid() -> int:
    """An unused uid unique to this evaluator process and slot (never an account's)."""
    base = 200_000 + os.getpid() * 256  # pid_max <= 2**22, so this stays far below 2**32 - 1
    with _uid_lock:
        for k in range(256):
            if base + k not in _uids_in_use:
                _uids_in_use.add(base + k)
                return base + k
    raise RuntimeError("more than 256 concurrent sandbox slots in one process")


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _live_pids_of(uid: int) -> list[int]:
    """Processes (not zombies) whose real, effective or saved uid is ``uid``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/status").read_text()
        except OSError:
            continue
        state = uids = None
        for line in text.splitlines():
            if line.startswith("State:"):
                state = line.split()[1]
            elif line.startswith("Uid:"):
                uids = line.split()[1:4]
                break
        if uids and str(uid) in uids and state != "Z":
            out.append(int(name))
    return out


def _kill_uid(uid: int) -> int:
    """Kill every process of ``uid``: ``kill(-1, SIGKILL)`` sent *as* that uid reaches all of them at once."""
    rounds = 0
    while _live_pids_of(uid) and rounds < 20:
        rounds += 1
        code = f"import os; os.setgroups([]); os.setgid({uid}); os.setuid({uid}); os.kill(-1, 9)"
        subprocess.run([sys.executable, "-I", "-S", "-c", code], env={}, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30, check=False)
        time.sleep(0.01 * rounds)
    return rounds


def _marked_pids(token: str) -> list[int]:
    """Live processes whose initial environment holds this run's token (forked children inherit it)."""
    needle = f"{MARKER}={token}".encode()
    me = os.geteuid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid == me and needle in Path(f"/proc/{name}/environ").read_bytes() and \
                    Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(int(name))
        except (OSError, IndexError):
            continue
    return out


def _kill_marked(token: str) -> int:
    """Best-effort cleanup without a uid of our own: kill what carries the token, until nothing does."""
    rounds = 0
    while (pids := _marked_pids(token)) and rounds < 50:
        rounds += 1
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005 * rounds)
    return rounds


def _sweep_shared_tmp(uid: int) -> list[str]:
    """Delete what the sample's uid left in world-writable folders (it could write nowhere else)."""
    removed = []
    for d in SHARED_TMP_DIRS:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)
                removed.append(e.path)
            except OSError:
                continue
    return removed


def _read_head(path: Path, n: int) -> str:
    with open(path, "rb") as f:
        return f.read(n * 4).decode("utf-8", "replace")[:n]


def _read_tail(path: Path, n: int) -> str:
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - n * 4))
        return f.read().decode("utf-8", "replace")[-n:]


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


class Sandbox:
    """Executes Python programs under ``Limits``; ``run_many`` uses a pool of ``workers`` threads.

    ``python`` is the interpreter for the programs (default: this one, or the system ``python3`` when the
    sandbox uid cannot run this one, e.g. an interpreter installed under a private home folder).
    ``drop_privileges``: "auto" (when root), or False. ``network``: try to cut the network ("auto") or not.
    """

    def __init__(self, limits: Limits | None = None, workers: int = 2, python: str | None = None,
                 drop_privileges: bool | str = "auto", network: bool | str = "auto") -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.limits = limits or Limits()
        self.workers = workers
        self.isolation = self._probe(python, drop_privileges, network)
        self.python = self.isolation["python"]

    # Setup -----------------------------------------------------------------------------------------
    def _probe(self, python: str | None, drop: bool | str, network: bool | str) -> dict:
        key = (python, drop, network)
        if key in _probe_cache:
            return dict(_probe_cache[key])
        root = os.geteuid() == 0
        candidates = [python] if python else []
        if not python:
            for c in (sys.executable, shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin"),
                      "/usr/bin/python3"):
                if c and c not in candidates:
                    candidates.append(c)
        want_drop = root and drop in ("auto", True)
        net_flags = [CLONE_NEWNET] if root else [CLONE_NEWUSER | CLONE_NEWNET]
        tried = []
        for drop_uid in ([True, False] if want_drop else [False]):
            for interp in candidates:
                for flags in ([*net_flags, 0] if network in ("auto", True) else [0]):
                    iso = {"python": interp, "uid_drop": drop_uid, "unshare_flags": flags}
                    res = self._run_one("import sys; print(sys.version_info[0])", iso, Limits(timeout_s=20))
                    tried.append(f"{interp} drop={drop_uid} flags={flags:#x}: {res.status} {res.reason}")
                    if res.passed and res.stdout.strip() == "3":
                        info = dict(iso, network=bool(flags & CLONE_NEWNET), root=root,
                                    nproc_enforced=drop_uid or not root,
                                    writes_confined=drop_uid, kill_by_uid=drop_uid)
                        _probe_cache[key] = info
                        return dict(info)
        raise RuntimeError("the sandbox cannot run any interpreter:\n  " + "\n  ".join(tried))

    # Running ---------------------------------------------------------------------------------------
    def run(self, program: str, limits: Limits | None = None) -> ExecResult:
        """Run one program (source text) and classify the outcome."""
        return self._run_one(program, self.isolation, limits or self.limits)

    def run_many(self, programs: Sequence[str], progress: Callable[[int, ExecResult], None] | None = None,
                 ) -> list[ExecResult]:
        """Run programs in parallel (``workers`` at a time); results in input order."""
        results: list[ExecResult | None] = [None] * len(programs)
        done = queue.SimpleQueue()

        def job(i: int) -> None:
            r = self.run(programs[i])
            results[i] = r
            done.put(i)
            if progress is not None:
                progress(i, r)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            list(pool.map(job, range(len(programs))))
        return [r for r in results if r is not None]

    def _run_one(self, program: str, iso: dict, limits: Limits) -> ExecResult:
        uid = _slot_uid() if iso["uid_drop"] else None
        root = Path(tempfile.mkdtemp(prefix="remask-sbx-"))
        t0 = time.perf_counter()
        timed_out = False
        token = uuid.uuid4().hex
        extra: dict = {"uid": uid, "run_token": token}
        try:
            work = root / "work"
            work.mkdir()
            prog = work / "main.py"
            prog.write_text(program, encoding="utf-8")
            if uid is not None:
                os.chmod(root, 0o711)  # the sample may pass through to work/, not list or write here
                os.chown(work, uid, uid)
                os.chown(prog, uid, uid)
            cfg = {"rlimits": limits.rlimits(), "unshare_flags": iso["unshare_flags"], "uid": uid, "gid": uid,
                   "cwd": str(work), "env": _env(str(work), token), "argv": [iso["python"], "-I", "main.py"]}
            out_p, err_p = root / "stdout", root / "stderr"
            with open(out_p, "wb") as out, open(err_p, "wb") as err:
                try:
                    p = subprocess.Popen([sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(cfg)], env={},
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=str(root),
                                         start_new_session=True, close_fds=True)
                except OSError as e:
                    return ExecResult("error", f"cannot start the sandbox: {e}", None, 0.0)
                try:
                    rc = p.wait(timeout=limits.timeout_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    rc = p.wait()
                    extra["kill_rounds"] = _kill_uid(uid) if uid is not None else _kill_marked(token)
            duration = time.perf_counter() - t0
            if uid is not None:
                left = _sweep_shared_tmp(uid)
                if left:
                    extra["removed_outside_files"] = left
            stdout = _read_head(out_p, limits.keep_stdout)
            stderr = _read_tail(err_p, limits.keep_stderr)
            cap = limits.file_size_mb << 20
            over = out_p.stat().st_size >= cap or err_p.stat().st_size >= cap
            return self._classify(rc, timed_out, over, duration, stdout, stderr, limits, extra)
        finally:
            shutil.rmtree(root, ignore_errors=True)
            if uid is not None:
                _release_uid(uid)

    @staticmethod
    def _classify(rc: int, timed_out: bool, over: bool, duration: float, stdout: str, stderr: str,
                  limits: Limits, extra: dict) -> ExecResult:
        def res(status: str, reason: str) -> ExecResult:
            return ExecResult(status, reason, rc, round(duration, 4), stdout, stderr, extra)

        if timed_out:
            return res("timeout", f"wall-clock limit of {limits.timeout_s:g} s")
        if rc == LAUNCH_FAILED and stderr.startswith("sandbox launcher:"):
            return res("error", _last_error_line(stderr))
        if over:
            return res("failed", f"output limit exceeded ({limits.file_size_mb} MiB)")
        if rc == 0:
            return res("passed", "")
        if rc < 0:
            sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
            if sig == "SIGXCPU":
                return res("timeout", f"CPU-time limit of {limits.cpu_limit} s")
            return res("failed", f"killed by {sig}")
        return res("failed", _last_error_line(stderr) or f"exit status {rc}")
