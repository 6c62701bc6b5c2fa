"""The dashboard in a real browser (Debian's Chromium through Playwright) over a real cluster:
two `python run.py` nodes sharing a private Redis."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_cluster import REPO_ARTIFACTS, Traffic, cluster_config
from e2e_harness import free_port
from playwright.sync_api import Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 10_000  # for anything the page must show; the registry TTL is 5 s


@pytest.fixture
def page() -> Iterator[tuple[Page, list[str]]]:
    """A Chromium page (dark scheme) and the console errors it logs."""
    if not CHROMIUM.exists():
        pytest.fail("the browser test needs Debian's chromium: apt-get install -y chromium")
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-background-networking"]
        )
        page = browser.new_page(viewport={"width": 1480, "height": 1000}, color_scheme="dark")
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page, errors
        browser.close()


# The req/s cell of a node's row in the nodes table (-1 if the row is absent).
NODE_RPS = """(name) => {
    const row = [...document.querySelectorAll('#nodes tbody tr')]
        .find(r => r.cells[1].textContent.includes(name));
    return row ? parseFloat(row.cells[4].textContent) : -1;
}"""


# The `shop` pool's card shows its retries and ring balance, and its dead member's trip.
SHOP_CARD = """(() => {
    const card = [...document.querySelectorAll('#upstreams .card')]
        .find(c => c.querySelector('h4').textContent.startsWith('shop'));
    const stats = card && card.querySelector('.pstats');
    return !!stats && /retries \\d/.test(stats.textContent) && stats.textContent.includes('ring ±')
        && card.textContent.includes('1 trip');
})()"""


def node_rps(page: Page, name: str) -> float:
    return page.evaluate(NODE_RPS, name)


def test_dashboard_follows_the_cluster(start_node, write_config, redis_server, page):
    """Node 1's page: 2 instances, node 2's traffic in its row, its hash pool's retries, ring
    balance and tripped member in their card, 1 instance after SIGKILL."""
    page, errors = page
    port1, port2, dead = free_port(), free_port(), free_port()
    config1 = write_config(cluster_config("node-1", redis_server.url, port2, dead), "n1.toml")
    config2 = write_config(cluster_config("node-2", redis_server.url, port1), "n2.toml")
    start_node("--config", str(config1), port=port1)
    node2 = start_node("--config", str(config2), "--role", "gateway", port=port2)

    page.goto(f"http://127.0.0.1:{port1}/dashboard")
    page.wait_for_function(
        "document.getElementById('instance-count').textContent === '2'", timeout=WAIT_MS
    )
    # Node 2 gets clearly more than node 1 (whose three streams add up to 45/s), and the
    # comparison waits until node 2's rate has ramped up.
    with (
        Traffic(port2, "/hello", 150),
        Traffic(port1, "/via/hello", 15),
        Traffic(port1, "/cached/hello", 15),
        Traffic(port1, "/shop/hello", 15),
    ):
        page.wait_for_function(
            f"(({NODE_RPS})('node-2') >= 90) && (({NODE_RPS})('node-1') > 0)", timeout=WAIT_MS
        )
        assert node_rps(page, "node-2") > node_rps(page, "node-1") > 0
        # The hash pool with a dead member: retries, the ring's balance, the dead one's trip.
        page.wait_for_function(SHOP_CARD, timeout=WAIT_MS)
        page.get_by_role("button", name="1 min").click()
        page.wait_for_timeout(2500)  # a few more points on the charts
        REPO_ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(REPO_ARTIFACTS / "dashboard.png"), full_page=True)

    node2.proc.send_signal(signal.SIGKILL)
    node2.proc.wait(timeout=5)
    page.wait_for_function(
        "document.getElementById('instance-count').textContent === '1'", timeout=WAIT_MS
    )
    assert page.locator("#link").text_content() == "● live"
    assert errors == []


def test_page_shows_the_lost_connection_and_reconnects(start_node, page):
    """Node stopped: "disconnected, retrying" on the page; node back: live again, by itself."""
    page, errors = page
    port = free_port()
    node = start_node(port=port)
    page.goto(f"http://127.0.0.1:{port}/dashboard")
    page.wait_for_function("document.getElementById('link').textContent === '● live'")
    assert node.terminate() == 0
    page.wait_for_function(
        "document.getElementById('banner').textContent.includes('Disconnected')", timeout=WAIT_MS
    )
    assert "reconnecting" in page.locator("#link").text_content()
    start_node(port=port)
    page.wait_for_function(
        "document.getElementById('link').textContent === '● live'", timeout=WAIT_MS
    )
    assert page.locator("#banner").is_hidden()
    # The browser itself reports the refused reconnects; nothing else may be logged.
    assert [e for e in errors if "ERR_CONNECTION_REFUSED" not in e] == []
