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
pytestmark = [
    pytest.mark.slow,  # a browser each
    pytest.mark.skipif(
        CHROMIUM is None, reason="no system Chromium (apt-get install chromium)"
    ),
]
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


# -- what the page refuses, and what it keeps ---------------------------------


def _message(page):
    return page.inner_text("#message")


def _until_says(page, words):
    """Wait until the page's message says ``words``."""
    _until(
        page, "w => document.getElementById('message').textContent.includes(w)", words
    )


def _peer_entries(url):
    """The peer's map entries as [change, ts, source], pulled over a link."""
    from repred.types import model

    mine = model()
    trio.run(lambda: repred.connect_websocket(mine, url + "replicas/data", live=False))
    return {e[0][0]: e for e in mine.history()}


def test_the_page_refuses_what_peers_would_refuse_and_keeps_its_link(browser, peer):
    tab = _tab(browser, peer.web)
    for key, value, says in [
        ("big", json.dumps("x" * 1_200_000), "line limit"),
        ("deep", "[" * 200 + "]" * 200, "nested deeper than 128"),
        ("huge", str(2**53), "2**53"),
    ]:
        _set(tab, key, value)
        _until_says(tab, says)
        assert key not in _state(tab)
        assert key in _message(tab)
        assert tab.is_visible("#message")
    # The link stayed up, and a good write after the refused ones arrives.
    assert tab.is_visible("#status.online")
    _set(tab, "fine", '"after"')
    peer.until(lambda e: e["event"] == "update" and e["key"] == "fine")
    assert set(_peer_entries(peer.ws)) == {"fine"}
    assert tab.is_visible("#status.online")


def test_the_client_checks_a_value_as_python_does(browser, peer):
    """The rules of repred's check_value and line limit, in the browser:
    each value is refused by both or by neither."""
    from repred._wire import MAX_DEPTH, check_value, encode_entry

    tab = _tab(browser, peer.web)
    results = tab.evaluate(
        """() => {
        const nest = n => { let v = 0; for (let i = 0; i < n; i++) v = [v]; return v }
        const values = {
            safe: 2 ** 53 - 1, unsafe: 2 ** 53, negative: -(2 ** 53), float: 1e300,
            nan: NaN, inf: -Infinity, deep127: nest(127), deep128: nest(128),
            fn: [() => 1], undef: {a: undefined}, date: new Date(0), map: new Map(),
            hole: [1, , 2], surrogate: 'a\\ud800', pair: '\\ud83d\\ude00',
            proto: JSON.parse('{"__proto__": 1}'), bigint: [1n],
        }
        const m = repred.map()
        const out = {}
        for (const [name, value] of Object.entries(values)) {
            try { m.set(name, value); out[name] = 'ok' }
            catch (e) { out[name] = e.message }
        }
        return out
    }"""
    )
    depth = MAX_DEPTH - 1  # the value sits inside its change, ["key", value]
    nest = 0
    for _ in range(depth):
        nest = [nest]
    python = {
        "safe": 2**53 - 1,
        "unsafe": 2**53,
        "negative": -(2**53),
        "float": 1e300,
        "deep127": nest,
        "deep128": [nest],
        "pair": "\U0001f600",
        "proto": {"__proto__": 1},
    }
    for name, value in python.items():
        try:
            check_value([name, value])
            accepted = True
        except TypeError:
            accepted = False
        assert (results[name] == "ok") == accepted, (name, results[name])
    for name in ("nan", "inf", "fn", "undef", "date", "map", "hole", "surrogate"):
        assert results[name] != "ok", name
    assert "bigint" in results["bigint"]
    assert "2**53" in results["unsafe"]
    assert "deep128" in results["deep128"]
    # The line limit counts UTF-8 bytes, with the stamp and source the
    # entry is written with and its line break (as update() measures it):
    # a limit met exactly is taken, one byte over not.
    lines = tab.evaluate(
        """limit => {
        const now = Date.now
        Date.now = () => 1700000000000
        try {
            const out = []
            for (const extra of [0, 1]) {
                const m = repred.map()
                m.maxLine = limit
                const room = limit - 1 - JSON.stringify([['k', ''], 17e11, m.id]).length
                const value = '\\u00e9'.repeat(room >> 1) + 'x'.repeat(room % 2 + extra)
                let ok
                try { m.set('k', value); ok = true } catch (e) { ok = e.message }
                out.push([value, m.id, ok])
            }
            return out
        } finally { Date.now = now }
    }""",
        300,
    )
    for (value, source, ok), expected in zip(lines, (True, False), strict=True):
        size = len(encode_entry(["k", value], 1_700_000_000_000, source))
        assert (size <= 300) is expected
        assert (ok is True) is expected, ok


def test_keys_named_like_object_properties_replicate_both_ways(browser, peer):
    names = ["constructor", "toString", "__proto__", "hasOwnProperty", "valueOf"]
    for i, name in enumerate(names):
        peer.send(f"set {name} {i}")
    tab = _tab(browser, peer.web)
    expected = {name: i for i, name in enumerate(names)}
    _until(tab, "n => Object.keys(window.page.data.toObject()).length === n", 5)
    as_json = "JSON.stringify(window.page.data.toObject())"
    assert json.loads(tab.evaluate(as_json)) == expected
    assert tab.locator("tr[data-key=__proto__] td.value").inner_text() == "2"
    # A tab that writes them keeps a sound clock: every stamp is a number.
    for name in ("toString", "__proto__", "later"):
        _set(tab, name, '"from the tab"')
        peer.until(lambda e, n=name: e["event"] == "update" and e["key"] == n)
    entries = _peer_entries(peer.ws)
    for name in ("toString", "__proto__", "later"):
        change, ts, _ = entries[name]
        assert list(change) == [name, "from the tab"]
        assert isinstance(ts, int | float)
    assert list(entries["constructor"][0]) == ["constructor", 0]


def test_a_read_only_peer_shows_the_pages_writes_as_refused(browser):
    node = Peer("--read-only")
    try:
        node.send("set seen yes")
        context = browser.new_context()
        # A write an earlier page kept, not yet sent: taken back once the
        # peer's digest says it takes none.
        entry = json.dumps([["kept", "x"], 1_700_000_000_000, "earlier"])
        context.add_init_script(
            "localStorage.setItem('repred.outbox.data.earlier 1700000000000',"
            f" {json.dumps(entry)})"
        )
        tab = context.new_page()
        tab.goto(node.web)
        tab.wait_for_selector("#status.online", timeout=WAIT_MS)
        _until(tab, "() => window.page.data.get('seen') === 'yes'")
        assert "kept" not in _state(tab)
        assert "refused by the peer" in _message(tab)
        assert tab.evaluate("Object.keys(localStorage).length") == 0
        _set(tab, "mine", '"refused?"')
        _until_says(tab, "read-only")
        assert "mine" not in _state(tab)
        assert tab.is_visible("#status.online")
        assert node.get("mine") is None
        assert node.get("kept") is None
        context.close()
    finally:
        node.close()


def test_writes_a_verifying_peer_refuses_are_shown_as_refused(browser, tmp_path):
    node = Peer("--verify", "--key", str(tmp_path / "node.key"))
    try:
        tab = _tab(browser, node.web)
        _set(tab, "unsigned", '"no"')
        _until_says(tab, "refused")
        assert "unsigned" not in _state(tab)
        tab.wait_for_selector("#status.online", timeout=WAIT_MS)
        assert node.get("unsigned") is None
        # Refused once and for all: the link is no longer cut again and again.
        opened = tab.evaluate("window.page.link.opened")
        node.send("set from-python 1")
        _until(tab, "() => window.page.data.get('from-python') === 1")
        assert tab.evaluate("window.page.link.opened") == opened
    finally:
        node.close()


def test_unsent_writes_survive_a_reload_and_are_cleared_once_the_peer_has_them(
    browser, peer
):
    context = browser.new_context()
    tab = context.new_page()
    tab.goto(peer.web)
    tab.wait_for_selector("#status.online", timeout=WAIT_MS)
    tab.evaluate("window.page.link.disconnect()")
    tab.wait_for_selector("#status:not(.online)", timeout=WAIT_MS)
    _set(tab, "offline", '"kept"')
    kept = "() => Object.keys(localStorage).filter(k => k.startsWith('repred.')).length"
    assert tab.evaluate(kept) == 1
    tab.reload()  # the write was never sent; the new page sends it
    tab.wait_for_selector("#status.online", timeout=WAIT_MS)
    peer.until(lambda e: e["event"] == "update" and e["key"] == "offline")
    assert peer.get("offline") == "kept"
    _until(tab, "() => window.page.data.get('offline') === 'kept'")
    # Once a digest of the peer's covers it, it is no longer kept.
    tab.evaluate("window.page.link.disconnect()")
    tab.evaluate("window.page.link.reconnect()")
    _until(tab, kept.replace("() =>", "() => 0 ===", 1))
    # A write kept by a tab that closed before sending is sent by the next.
    tab.evaluate("window.page.link.disconnect()")
    _set(tab, "closed", '"tab"')
    tab.close()
    other = context.new_page()
    other.goto(peer.web)
    peer.until(lambda e: e["event"] == "update" and e["key"] == "closed")
    context.close()


def test_a_refused_write_gives_its_key_back_to_what_held_it(browser, peer):
    tab = _tab(browser, peer.web)
    result = tab.evaluate(
        """() => {
        const m = repred.map(), seen = [], refused = []
        const now = Date.now()
        m._apply(['k', 'first'], now - 3000, 'P')
        m._apply(['other', 1], now - 2999, 'P')
        m.set('k', 'mine')
        m.set('new', 'mine too')
        // A peer's write older than ours, newer than what ours replaced.
        m._apply(['k', 'between'], now - 1000, 'Q')
        m.on(change => seen.push(change))
        m.onrefused((change, why) => refused.push([change, why]))
        m._refuse(m.pending(), 'no')
        return {state: m.toObject(), seen, refused, pending: m.pending().length}
    }"""
    )
    assert result["state"] == {"k": "between", "other": 1}
    assert result["pending"] == 0
    assert sorted(map(tuple, result["seen"])) == [("k", "between"), ("new", None)]
    assert sorted(c[0] for c, why in result["refused"]) == ["k", "new"]
