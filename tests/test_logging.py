"""The library's logging: bounded whatever peers do, and quiet by default."""

from __future__ import annotations

import logging

import trio

import repred
from repred._log import RateLimitedLog, limited
from repred.types import model


def test_records_of_a_kind_are_limited_per_window(caplog):
    now = [0.0]
    logger = logging.getLogger("repred.test-limit")
    limit = RateLimitedLog(logger, burst=3, window=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="repred.test-limit"):
        for i in range(50):
            limit(logging.WARNING, "flood", "bad line %d", i)
        limit(logging.WARNING, "other", "another kind")
        assert [r.getMessage() for r in caplog.records] == [
            "bad line 0",
            "bad line 1",
            "bad line 2",
            "another kind",
        ]
        caplog.clear()
        now[0] = 11.0
        limit(logging.WARNING, "flood", "bad line %d", 99)
        messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "repred: 47 more like the next were left out (flood, over 10 s)",
        "bad line 99",
    ]


def test_a_disabled_level_costs_nothing(caplog):
    with caplog.at_level(logging.ERROR, logger="repred"):
        limited(logging.INFO, "closed", "never %s", "seen")
    assert not caplog.records


async def test_a_flood_of_bad_peers_logs_a_bounded_number_of_warnings(caplog):
    server = model(id="server")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(repred.serve_tcp, server, 0)
        port = listeners[0].socket.getsockname()[1]
        with caplog.at_level(logging.INFO, logger="repred"):
            for _ in range(60):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"not json\n")
                # The server closes it after refusing the line.
                while await stream.receive_some(1024):
                    pass
                await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    refused = [r for r in caplog.records if "refused what a peer sent" in r.message]
    assert 1 <= len(refused) <= 10
    assert all(r.levelno == logging.WARNING for r in refused)


def test_a_record_said_once_per_thing(caplog):
    logger = logging.getLogger("repred.test-once")
    limit = RateLimitedLog(logger, burst=100, window=10.0, clock=lambda: 0.0)
    with caplog.at_level(logging.INFO, logger="repred.test-once"):
        for _ in range(3):
            for node in ("a", "b"):
                limit(logging.WARNING, "mismatch", "about %s", node, once=node)
    assert [r.getMessage() for r in caplog.records] == ["about a", "about b"]


def test_the_library_bounds_its_records_in_one_place():
    """Every module logs what peers cause through the one limited log, so
    one reset (as each test's fixture does) starts every window afresh."""
    import importlib
    import pkgutil

    found = set()
    for info in pkgutil.walk_packages(repred.__path__, "repred."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, RateLimitedLog):
                found.add(id(value))
    assert found == {id(limited)}


def test_a_type_mismatch_is_said_once_per_node_and_name(caplog):
    from repred import LinkOptions
    from repred._mux import Mux

    hello = b'{"repred-peer":3,"node":"127.0.0.1:9","replicas":{"data":"gset"}}\n'
    with caplog.at_level(logging.INFO, logger="repred.peer"):
        for _ in range(3):
            Mux({"data": model(id="m")}, "127.0.0.1:1", LinkOptions()).feed(hello)
    said = [r for r in caplog.records if "not replicated" in r.getMessage()]
    assert len(said) == 1
    assert said[0].name == "repred.peer"
    assert said[0].levelno == logging.WARNING
