"""Fixtures of the fault tests: the processes they kill (members, nodes; the private
redis-server is tests/conftest.py's `redis_server`) and an HTTP client for the load."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from .fleet import Figures, Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """Members and nodes started by the test, each stopped by pid afterwards."""
    made = Fleet(tmp_path)
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as made:
        yield made


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """(name, value) pairs a test measured (recovery times), shown after the run."""
    return request.node.user_properties


def pytest_terminal_summary(terminalreporter) -> None:
    reports = [r for kind in ("passed", "failed") for r in terminalreporter.stats.get(kind, [])]
    measured = [r for r in reports if r.when == "call" and "faults/" in r.nodeid]
    for report in measured:
        if report.user_properties:
            shown = ", ".join(f"{name} {value}" for name, value in report.user_properties)
            terminalreporter.write_line(f"{report.nodeid.rsplit('::', 1)[-1]}: {shown}")
