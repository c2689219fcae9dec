"""Shared test setup: every test writes its caches into a temporary folder, never ~/.cache."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # One cache per test session: converted Inception weights are reused across tests.
    if not os.environ.get("EVALSUITE_CACHE_KEEP"):
        os.environ["EVALSUITE_CACHE"] = str(tmp_path_factory.mktemp("evalsuite-cache"))
