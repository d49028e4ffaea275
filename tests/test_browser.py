"""The peer's pages in a real Chromium (Playwright), with a Python peer.

Chromium comes from the system packages (``apt-get install chromium``,
which ``.ci/run`` does when it is missing); Playwright drives it through
``executable_path``. Without either, these tests are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time

import orjson
import pytest
import trio

import repred
from repred._websocket import open_websocket
from repred.types import doc

from .test_websocket import until_closed

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed"
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no system Chromium (apt-get install chromium)"
)
SCREENSHOT = os.environ.get("REPRED_SCREENSHOT")
WAIT_MS = 15_000


class Peer:
    """``python -m repred.peer 0 --web 0 --json`` with a thread reading events."""

    def __init__(self, *extra: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "repred.peer", "0", "--web", "0", "--json", *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.events: queue.Queue[dict] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        listening = self.until(lambda e: e["event"] == "listening")
        self.web = listening["web"]
        self.ws = self.web.replace("http://", "ws://")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))

    def until(self, predicate, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            if predicate(event):
                return event

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def get(self, key: str):
        self.send(f"get {key}")
        return self.until(lambda e: e["event"] == "value" and e["key"] == key)["value"]

    def close(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        self.process.stdout.close()


@pytest.fixture
def peer():
    node = Peer()
    yield node
    node.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()


def _tab(browser, url):
    page = browser.new_context().new_page()
    page.goto(url)
    page.wait_for_selector("#status.online", timeout=WAIT_MS)
    return page


def _state(page):
    return page.evaluate("window.page.data.toObject()")


def _set(page, key, value):
    page.fill("input[name=key]", key)
    page.fill("input[name=value]", value)
    page.click("form#edit button")


def _until(page, expression, arg=None):
    page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)


def test_two_tabs_and_a_python_peer_converge_on_the_map(browser, peer):
    one, two = _tab(browser, peer.web), _tab(browser, peer.web)
    _set(one, "colour", '"blue"')
    _set(two, "size", "3")
    peer.send('set shape {"sides": 4}')
    _set(one, "size", '"large"')  # the same key again, after the other tab
    expected = {"colour": "blue", "size": "large", "shape": {"sides": 4}}
    for tab in (one, two):
        _until(
            tab,
            "e => JSON.stringify(window.page.data.toObject()) === e",
            json.dumps(expected, separators=(",", ":"), sort_keys=False),
        )
    assert _state(one) == _state(two) == expected
    peer.until(
        lambda e: (
            e["event"] == "update" and e["key"] == "size" and e["value"] == "large"
        )
    )
    assert peer.get("colour") == "blue"
    # The table says who wrote what.
    assert one.inner_text("tr[data-key=size] td.who") == "this tab"
    two.click("tr[data-key=colour] button.delete")
    _until(one, "() => !('colour' in window.page.data.toObject())")
    peer.until(lambda e: e["event"] == "delete" and e["key"] == "colour")
    if SCREENSHOT:
        one.screenshot(path=SCREENSHOT, full_page=True)


def test_a_tab_that_was_offline_catches_up_both_ways(browser, peer):
    tab = _tab(browser, peer.web)
    tab.evaluate("window.page.link.disconnect()")
    tab.wait_for_selector("#status:not(.online)", timeout=WAIT_MS)
    _set(tab, "offline-edit", '"from the tab"')
    peer.send("set while-away from-python")
    assert "while-away" not in _state(tab)
    tab.evaluate("window.page.link.reconnect()")
    tab.wait_for_selector("#status.online", timeout=WAIT_MS)
    _until(tab, "() => window.page.data.get('while-away') === 'from-python'")
    peer.until(lambda e: e["event"] == "update" and e["key"] == "offline-edit")
    assert peer.get("offline-edit") == "from the tab"


def _python_doc(url):
    """The peer's todo doc, as a Python doc() that synced with it."""
    mine = doc()
    trio.run(lambda: repred.connect_websocket(mine, url + "replicas/todo", live=False))
    return mine


def test_the_todo_page_moves_an_item_to_done_everywhere(browser, peer):
    one, two = _tab(browser, peer.web + "todo"), _tab(browser, peer.web + "todo")
    for title in ("milk", "bread", "post"):
        one.fill("input[name=title]", title)
        one.click("form#add button")
    _until(two, "() => document.querySelectorAll('#todo li').length === 3")
    # Reorder in one tab, finish in the other.
    one.click("#todo li:nth-child(3) button.up")
    _until(
        two,
        "() => document.querySelector('#todo li:nth-child(2) .title')"
        ".textContent === 'post'",
    )
    two.click("#todo li:nth-child(1) button.finish")
    for tab in (one, two):
        _until(
            tab,
            "() => document.querySelectorAll('#done li').length === 1"
            " && document.querySelectorAll('#todo li').length === 2",
        )
    titles = [one.inner_text(f"#todo li:nth-child({i}) .title") for i in (1, 2)]
    assert titles == ["post", "bread"]
    assert one.inner_text("#done li .title") == "milk"
    mine = _python_doc(peer.ws)
    todo = [r["title"] for r in mine.create_seq("list", "todo").rows()]
    done = [r["title"] for r in mine.create_seq("list", "done").rows()]
    assert (todo, done) == (["post", "bread"], ["milk"])


async def _hostile(url):
    """Garbage, an oversized message, a far-future stamp: each link is cut
    or its entry deferred, and nothing else changes."""
    import trio_websocket

    for payload in (b"not json at all\n", b"x" * (2 << 20)):
        async with open_websocket(url, max_message_size=4 << 20) as ws:
            with trio.fail_after(10):
                with pytest.raises(trio_websocket.ConnectionClosed):
                    await until_closed(ws, payload)
    async with open_websocket(url) as ws:
        await ws.send_message(b'{"id":"evil","clock":{}}\n')
        await ws.send_message(orjson.dumps([["future", 1], 2**52, "evil"]) + b"\n")
        await ws.send_message(b'"SYNC"\n')


def test_hostile_websocket_clients_leave_the_page_and_peer_working(browser, peer):
    tab = _tab(browser, peer.web)
    trio.run(_hostile, peer.ws + "replicas/data")
    _set(tab, "after", '"still works"')
    peer.until(lambda e: e["event"] == "update" and e["key"] == "after")
    assert peer.get("future") is None
    peer.send("set from-python yes")
    _until(tab, "() => window.page.data.get('from-python') === 'yes'")
    assert "future" not in _state(tab)


def test_pages_of_another_origin_are_refused_unless_allowed(browser):
    node = Peer("--web-origin", "http://allowed.example")
    try:
        page = browser.new_context().new_page()
        page.goto(node.web)  # its own origin: allowed
        page.wait_for_selector("#status.online", timeout=WAIT_MS)
        script = """url => new Promise(done => {
            const ws = new WebSocket(url)
            ws.onopen = () => done('open'); ws.onerror = () => done('refused')
        })"""
        page.goto("about:blank")  # an opaque origin ("null"): refused
        assert page.evaluate(script, node.ws + "replicas/data") == "refused"
    finally:
        node.close()


def test_the_page_breaks_ties_as_python_does(browser, peer):
    """Writes to one key at the same stamp resolve by source, in both
    languages, whatever order they arrive in."""
    from repred.types import model

    tab = _tab(browser, peer.web)
    entries = [
        [["k", "from-B"], 1_700_000_000_000, "B"],
        [["k", "from-A"], 1_700_000_000_000, "A"],
        [["k", "from-a"], 1_700_000_000_000, "a"],
        [["j", "later"], 1_700_000_000_000.002, "A"],
        [["j", "earlier"], 1_700_000_000_000.001, "Z"],
    ]
    script = """entries => [entries, entries.slice().reverse()].map(order => {
        const m = repred.map()
        order.forEach(e => m._apply(e[0], e[1], e[2]))
        return m.toObject()
    })"""
    in_js = tab.evaluate(script, entries)
    for order in (entries, entries[::-1]):
        m = model(id="py", wall=lambda: 1_700_000_000_000)
        for change, ts, source in order:
            m.apply([(change, ts, source)])
        assert in_js[0] == in_js[1] == m.to_dict() == {"k": "from-a", "j": "later"}
