"""Sandbox launcher: runs as a fresh interpreter (``python -I -S _launch.py CONFIG_JSON``), applies the limits
to itself, then replaces itself with the untrusted program.

A separate launcher (rather than ``Popen(preexec_fn=...)``) keeps process creation thread-safe: the
evaluator runs several samples at once from a thread pool, and ``preexec_fn`` may deadlock in threaded
parents. Only the standard library is used, and nothing is imported that the program could influence.
"""

import ctypes
import json
import os
import resource
import sys

LAUNCH_FAILED = 111  # exit status meaning "the sandbox could not be set up" (never the program's)


def _fail(msg: str) -> None:
    sys.stderr.write(f"sandbox launcher: {msg}\n")
    sys.stderr.flush()
    os._exit(LAUNCH_FAILED)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    for name, value in cfg["rlimits"].items():
        soft, hard = value if isinstance(value, list) else (value, value)
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError) as e:
            _fail(f"cannot set {name}={value}: {e}")
    flags = int(cfg.get("unshare_flags") or 0)
    if flags:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(flags) != 0:
            _fail(f"unshare({flags:#x}) failed: errno {ctypes.get_errno()}")
    uid, gid = cfg.get("uid"), cfg.get("gid")
    if uid is not None:
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        except OSError as e:
            _fail(f"cannot switch to uid {uid}: {e}")
    try:
        os.chdir(cfg["cwd"])
        os.umask(0o077)
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except OSError as e:
        _fail(f"cannot start {cfg['argv'][0]}: {e}")


if __name__ == "__main__":
    main()
