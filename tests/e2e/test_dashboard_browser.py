"""The dashboard in a real browser (Debian's Chromium through Playwright) over a real cluster:
two `python run.py` nodes sharing a private Redis."""

from __future__ import annotations

import re
import signal
import time
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


# Elements sticking out of the page, or of the card or tile they sit in (by bounding box).
OVERFLOWS = """(() => {
    const out = [];
    const width = document.documentElement.clientWidth;
    const page = document.documentElement.scrollWidth;
    if (page > width) out.push('page ' + page);
    for (const el of document.querySelectorAll('main *')) {
        const r = el.getBoundingClientRect();
        if (!r.width || getComputedStyle(el).display === 'none') continue;
        const box = el.parentElement.closest('.card, .tile');
        const outer = box ? box.getBoundingClientRect() : { left: 0, right: width };
        if (r.right > outer.right + 1 || r.left < outer.left - 1 || r.right > width + 1) {
            const name = el.id || el.className || el.tagName;
            out.push(`${name} ${r.left}-${r.right} in ${outer.left}-${outer.right}`);
        }
    }
    return out.slice(0, 10);
})()"""

# The state cell of a node's row ('' if the row is absent).
NODE_STATE = """(name) => {
    const row = document.querySelector(`#nodes tbody tr[data-node="${name}"]`);
    return row ? row.cells[0].textContent.trim() : '';
}"""

# The colour of a node's swatch in the nodes table and of its line in the req/s legend.
NODE_COLOURS = """(name) => {
    const row = document.querySelector(`#nodes tbody tr[data-node="${name}"] .swatch`);
    const item = document.querySelector(`#chart-rps .legend [data-series="${name}"] i`);
    const colour = (el) => el && getComputedStyle(el).backgroundColor;
    return [colour(row), colour(item)];
}"""

LEGEND_COLOURS = """(id) => [...document.querySelectorAll(`#${id} .legend [data-series] i`)]
    .map(i => getComputedStyle(i).backgroundColor)"""


def node_state(page: Page, name: str) -> str:
    return page.evaluate(NODE_STATE, name)


def shoot(page: Page, name: str) -> None:
    REPO_ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(REPO_ARTIFACTS / name), full_page=True)


def test_dashboard_follows_the_cluster(start_node, write_config, redis_server, page):
    """Two nodes under load, one paused (stale: grey, out of the totals), one killed (down,
    listed, named in the events, "1/2 reporting"), then restarted (back, same colour);
    legends carry values without a hover, and nothing overflows at 800 px."""
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
        page.wait_for_timeout(1500)  # a few more points on the charts
        # Legends show the newest values with no hover; percentiles never wear a node's colour.
        legend = page.locator("#chart-rps .legend").text_content()
        assert re.search(r"node-2 [\d.]+k? req/s", legend), legend
        assert re.search(r"p99 [\d.]+ ms", page.locator("#chart-latency .legend").text_content())
        nodes = set(page.evaluate(LEGEND_COLOURS, "chart-rps"))
        assert not nodes & set(page.evaluate(LEGEND_COLOURS, "chart-latency"))
        routes = page.locator("#routes tbody").text_content()
        assert "/hello" in routes and "/via/{tail:.*}" in routes
        assert page.evaluate(OVERFLOWS) == []
        shoot(page, "dashboard-1400.png")
        page.set_viewport_size({"width": 800, "height": 1000})
        page.wait_for_timeout(1200)  # a frame rendered at this width
        assert page.evaluate(OVERFLOWS) == []
        shoot(page, "dashboard-800.png")
        page.set_viewport_size({"width": 1400, "height": 1000})

        # Paused (a busy machine's late heartbeat, exaggerated): stale, not gone.
        colour = page.evaluate(NODE_COLOURS, "node-2")
        node2.proc.send_signal(signal.SIGSTOP)
        page.wait_for_function(f"({NODE_STATE})('node-2').includes('stale')", timeout=WAIT_MS)
        assert "out of totals" in node_state(page, "node-2")
        assert "1/2 reporting" in page.locator("#reporting").text_content()
        assert "node-2 stale" in page.locator("#reporting").text_content()
        node2.proc.send_signal(signal.SIGCONT)
        page.wait_for_function(f"({NODE_STATE})('node-2').startsWith('●')", timeout=WAIT_MS)

    node2.proc.send_signal(signal.SIGKILL)
    node2.proc.wait(timeout=5)
    killed = time.monotonic()
    page.wait_for_function(f"({NODE_STATE})('node-2').includes('down')", timeout=WAIT_MS)
    assert time.monotonic() - killed <= 5.5  # 5 s, and the poll's own pace
    assert "last seen" in node_state(page, "node-2")
    assert "node-2 down at" in page.locator("#events").text_content()
    assert page.locator("#reporting").text_content().startswith("1/2 reporting")
    assert page.locator("#instance-count").text_content() == "1"
    assert page.evaluate(OVERFLOWS) == []
    shoot(page, "dashboard-down.png")
    page.set_viewport_size({"width": 800, "height": 1000})
    page.wait_for_timeout(1200)
    assert page.evaluate(OVERFLOWS) == []
    shoot(page, "dashboard-down-800.png")
    page.set_viewport_size({"width": 1400, "height": 1000})

    start_node("--config", str(config2), "--role", "gateway", port=port2)
    page.wait_for_function(f"({NODE_STATE})('node-2').startsWith('●')", timeout=WAIT_MS)
    page.wait_for_function(
        "document.getElementById('events').textContent.includes('node-2 back')", timeout=WAIT_MS
    )
    with Traffic(port2, "/hello", 50):
        page.wait_for_function(
            "document.querySelector('#chart-rps .legend [data-series=\"node-2\"]')",
            timeout=WAIT_MS,
        )
        assert page.evaluate(NODE_COLOURS, "node-2") == colour
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
