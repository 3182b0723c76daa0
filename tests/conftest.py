"""Shared fixtures: tiny random checkpoints on disk (a base and experts perturbed from it).

The tests never write into a user's experiment cache: ``RECALL_RUNS`` points at a temporary folder for the
whole session (subprocesses, such as the notebooks' kernels, inherit it) and is removed at the end. The
pinned archives and the converted SmolLM2 model are inputs, verified by sha256, and stay in the shared
cache (``~/.cache/recall``) so they are downloaded once.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_RUNS = tempfile.mkdtemp(prefix="recall-test-runs-")
os.environ["RECALL_RUNS"] = _RUNS
atexit.register(shutil.rmtree, _RUNS, ignore_errors=True)

import pytest  # noqa: E402

from recall.tiny import make_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pool(tmp_path_factory):
    """(base, [expert1, expert2]): a tiny Llama and two seeded perturbations of it, as folders."""
    root = tmp_path_factory.mktemp("tiny_pool")
    base = make_tiny_checkpoint(root / "base", seed=0)
    e1 = make_tiny_checkpoint(root / "e1", seed=1, perturb_from=base, noise=0.01)
    e2 = make_tiny_checkpoint(root / "e2", seed=2, perturb_from=base, noise=0.05)
    return base, [e1, e2]
