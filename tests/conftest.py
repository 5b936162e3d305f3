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
