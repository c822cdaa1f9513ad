"""Running published reference code in the parity tests: each runner here is a script that a test starts in a
subprocess whose ``sys.path`` begins with the transformers version that reference targets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("REMASK_REF_CACHE", Path.home() / ".cache" / "remask-ref"))


def transformers_at(version: str, extras: tuple[str, ...] = ()) -> Path:
    """A cache folder holding transformers==``version`` (and ``extras``) for ``PYTHONPATH``, installed with
    ``pip install --target`` on first use; the test is skipped, with pip's reason, only when that fails."""
    target = CACHE / f"tf-{version}"
    imports = ", ".join(("transformers", *extras))
    probe = [sys.executable, "-c", f"import sys; sys.path.insert(0, sys.argv[1]); import {imports}; "
             f"assert transformers.__version__ == {version!r}", str(target)]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target",
                            str(target), "--upgrade", f"transformers=={version}", *extras],
                           capture_output=True, text=True)
        if r.returncode != 0 or subprocess.run(probe, capture_output=True).returncode != 0:
            pytest.skip(f"could not install transformers=={version}: {(r.stderr or r.stdout).strip()[-300:]}")
    return target
