"""Shared fixtures: tiny random checkpoints on disk (a base and experts perturbed from it)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from recall.testing import make_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pool(tmp_path_factory):
    """(base, [expert1, expert2]): a tiny Llama and two seeded perturbations of it, as folders."""
    root = tmp_path_factory.mktemp("tiny_pool")
    base = make_tiny_checkpoint(root / "base", seed=0)
    e1 = make_tiny_checkpoint(root / "e1", seed=1, perturb_from=base, noise=0.01)
    e2 = make_tiny_checkpoint(root / "e2", seed=2, perturb_from=base, noise=0.05)
    return base, [e1, e2]
