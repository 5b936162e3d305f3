"""Shared fixtures. `testdata` points at ../shared/testdata and skips when it is absent."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_TESTDATA = REPO.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def testdata() -> Path:
    """Path of the shared real test data; skips the test when the folder is absent."""
    if not SHARED_TESTDATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_TESTDATA} (only on project machines)")
    return SHARED_TESTDATA


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` run only where CUDA is available (skipped with the reason)."""
    if not any("cuda" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    build = "a CPU-only torch build" if torch.version.cuda is None else "no usable GPU"
    skip = pytest.mark.skip(reason=f"needs CUDA: not available here ({build})")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
