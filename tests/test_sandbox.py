"""The execution sandbox against hostile programs: each limit is proven by a program that breaks it."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from training.evals.sandbox import Limits, Sandbox, _live_pids_of, _marked_pids

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(Limits(timeout_s=20), workers=2)


def test_isolation_is_reported_honestly(sandbox):
    iso = sandbox.isolation
    assert {"python", "uid_drop", "network", "nproc_enforced", "writes_confined", "kill_by_uid"} <= iso.keys()
    if os.geteuid() == 0:
        # Root is exempt from RLIMIT_NPROC: it is enforced only when the uid is dropped.
        assert iso["nproc_enforced"] == iso["uid_drop"]
    else:
        assert iso["nproc_enforced"] and not iso["uid_drop"]


def test_passing_and_failing_programs_are_classified(sandbox):
    ok = sandbox.run("print('hello')")
    assert ok.status == "passed" and ok.stdout.strip() == "hello" and ok.returncode == 0
    bad = sandbox.run("assert 1 + 1 == 3, 'arith'")
    assert bad.status == "failed" and bad.reason == "AssertionError: arith"
    syn = sandbox.run("def f(:\n")
    assert syn.status == "failed" and syn.reason.startswith("SyntaxError")
    seg = sandbox.run("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert seg.status == "failed" and seg.reason == "killed by SIGSEGV"


def test_environment_is_scrubbed_and_cwd_is_fresh(sandbox, monkeypatch):
    monkeypatch.setenv("REMASK_TEST_SECRET", "hunter2")
    r = sandbox.run("import json, os; print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(), "
                    "'files': os.listdir('.')}))")
    assert r.passed, r.reason
    d = json.loads(r.stdout)
    assert "REMASK_TEST_SECRET" not in d["env"] and "hunter2" not in r.stdout
    assert set(d["env"]) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE",
                             "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "LC_CTYPE",
                             "REMASK_SANDBOX_RUN"}
    assert d["env"]["HOME"] == d["cwd"] and d["files"] == ["main.py"]
    assert not Path(d["cwd"]).exists(), "the working directory is removed after the run"


def test_infinite_loop_times_out():
    sb = Sandbox(Limits(timeout_s=1.0, cpu_s=30))
    t0 = time.perf_counter()
    r = sb.run("while True:\n    pass\n")
    assert r.status == "timeout" and "wall-clock" in r.reason
    assert time.perf_counter() - t0 < 15  # killed, not waited for (generous: the CI machine is shared)


def test_cpu_time_limit_kills_a_busy_program():
    r = Sandbox(Limits(timeout_s=60, cpu_s=1)).run("while True:\n    pass\n")
    assert r.status == "timeout" and "CPU-time" in r.reason


def test_huge_allocation_fails_with_memory_error():
    r = Sandbox(Limits(memory_mb=512)).run("x = bytearray(8 * 1024 ** 3)\nprint('allocated')")
    assert r.status == "failed" and "MemoryError" in r.reason and "allocated" not in r.stdout


def test_printing_forever_is_capped():
    r = Sandbox(Limits(timeout_s=20, file_size_mb=1)).run("while True:\n    print('x' * 1000)\n")
    assert r.status == "failed" and r.reason.startswith("output limit exceeded")
    assert len(r.stdout) <= Limits().keep_stdout


FORK_BOMB = """
import os, sys, time
made = 0
for _ in range(500):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:          # child: leave the process group and linger, as a runaway would
        os.setsid()
        time.sleep(120)
        os._exit(0)
    made += 1
print(made)
"""


def test_fork_bomb_is_bounded_and_leaves_nothing_behind():
    sb = Sandbox(Limits(timeout_s=20, max_processes=16))
    r = sb.run(FORK_BOMB)
    assert r.status == "passed", r.reason
    made = int(r.stdout.strip())
    if sb.isolation["nproc_enforced"]:
        assert made < 16, f"RLIMIT_NPROC let {made} processes through"
    if sb.isolation["kill_by_uid"]:
        assert r.extra["kill_rounds"] >= 1  # the lingering children were found and killed
        assert not _live_pids_of(r.extra["uid"]), "processes of the sample's uid survived the run"


def test_writing_outside_its_directory_is_denied(sandbox, tmp_path):
    """"Outside" = anywhere but the fresh working directory: the evaluator's folders, the repository, the
    parent of the working directory. World-writable temp folders stay writable but are emptied afterwards."""
    if not sandbox.isolation["writes_confined"]:
        pytest.skip("writes are confined only when the sandbox can drop to its own uid (run as root)")
    target_dir = tmp_path / "evaluator"
    target_dir.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(target_dir, 0o777 & ~0o022)
    stray = f"/tmp/remask-stray-{uuid.uuid4().hex}"
    program = f"""
import json
out = {{}}
for p in [{str(target_dir / "x.txt")!r}, {str(REPO / "pwned.txt")!r}, "../escape.txt", {stray!r}, "inside.txt"]:
    try:
        with open(p, "w") as f:
            f.write("x")
        out[p] = "written"
    except OSError as e:
        out[p] = type(e).__name__
print(json.dumps(out))
"""
    r = sandbox.run(program)
    assert r.passed, r.reason
    out = json.loads(r.stdout)
    assert out[str(target_dir / "x.txt")] == "PermissionError"
    assert out[str(REPO / "pwned.txt")] == "PermissionError"
    assert out["../escape.txt"] == "PermissionError"
    assert out["inside.txt"] == "written"
    assert not (target_dir / "x.txt").exists() and not (REPO / "pwned.txt").exists()
    if out[stray] == "written":
        assert not Path(stray).exists() and stray in r.extra["removed_outside_files"]


def test_no_network_when_the_platform_allows(sandbox):
    if not sandbox.isolation["network"]:
        pytest.skip("no network namespace on this platform")
    r = sandbox.run("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=5)\n")
    assert r.status == "failed" and "Errno" in r.reason
    r = sandbox.run("import socket; print(sorted(n for _, n in socket.if_nameindex()))")
    assert r.passed and r.stdout.strip() == "['lo']"


def test_run_many_keeps_order_and_runs_in_parallel(sandbox):
    progs = [f"print({i})" if i % 3 else f"raise SystemExit({i + 1})" for i in range(9)]
    res = sandbox.run_many(progs)
    assert [r.stdout.strip() for r in res if r.passed] == [str(i) for i in range(9) if i % 3]
    assert [r.status for r in res] == ["failed" if i % 3 == 0 else "passed" for i in range(9)]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Sandbox(workers=0)
    with pytest.raises(RuntimeError, match="cannot run any interpreter"):
        Sandbox(python="/nonexistent/python3")


def test_without_privilege_drop_the_limits_still_apply():
    sb = Sandbox(Limits(timeout_s=1.0, cpu_s=30), drop_privileges=False)
    assert not sb.isolation["uid_drop"] and not sb.isolation["writes_confined"]
    if os.geteuid() == 0:
        assert not sb.isolation["nproc_enforced"], "root is exempt from RLIMIT_NPROC: the report must say so"
    assert sb.run("print(2 + 2)").stdout.strip() == "4"
    assert sb.run("while True:\n    pass\n").status == "timeout"
    assert Sandbox(Limits(memory_mb=512), drop_privileges=False).run("x = bytearray(8 * 1024 ** 3)").reason == \
        "MemoryError"
    # Lingering children that left the process group are found by the run's token and killed.
    r = Sandbox(Limits(timeout_s=20, max_processes=16), drop_privileges=False).run(FORK_BOMB.replace("500", "5"))
    assert r.passed and int(r.stdout) == 5 and r.extra["kill_rounds"] >= 1
    assert not _marked_pids(r.extra["run_token"])
