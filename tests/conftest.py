"""Shared fixtures: a random ``test``-preset checkpoint with a real tokenizer, built once per session."""

from __future__ import annotations

import pytest

from model.testing import make_test_checkpoint


@pytest.fixture(scope="session")
def test_model_dir(tmp_path_factory):
    """Folder of a random ``test`` model (float32) with a BPE tokenizer trained on the stdlib."""
    return make_test_checkpoint(tmp_path_factory.mktemp("models") / "test-model")
