import os
import sys

# Checked mode: the pass manager verifies the graph and compares results after every pass.
os.environ.setdefault("GRAPHC_CHECK", "1")
sys.path.insert(0, os.path.dirname(__file__))  # tests/models.py

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import graphc  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    graphc.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private compile cache per test, so tests never see each other's entries."""
    d = tmp_path / "graphc-cache"
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(d))
    return d


@pytest.fixture
def threads():
    """graphc.set_num_threads for this test (the threads kernels are split over), reset after."""
    from graphc.passes.parallel import set_num_threads

    yield set_num_threads
    set_num_threads(None)
