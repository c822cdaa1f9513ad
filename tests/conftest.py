"""Shared fixtures: a random ``test``-preset checkpoint with a real tokenizer, built once per session."""

from __future__ import annotations

import os

# The models in tests are tiny: one thread is faster than two fighting over a shared 2-core machine, and
# subprocesses (the language server) inherit it.
if not os.environ.get("OMP_NUM_THREADS", "").isdigit():
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

from model.testing import make_test_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def test_model_dir(tmp_path_factory):
    """Folder of a random ``test`` model (float32) with a BPE tokenizer trained on the stdlib."""
    return make_test_checkpoint(tmp_path_factory.mktemp("models") / "test-model")
