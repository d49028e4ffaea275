"""The public names the README and users rely on, and nothing more."""

import repred
import repred.protocol
import repred.testing
import repred.types

TOP_LEVEL = {
    # the primitive
    "repred",
    "Replica",
    # links
    "replicate",
    "serve_tcp",
    "serve_websocket",
    "connect_tcp",
    "connect_websocket",
    "connect_redis",
    "Connection",
    "subscribe",
    # what anti-entropy finds
    "Divergence",
    # gossip
    "open_peer",
    "Peer",
    # placement
    "owners",
    # durability
    "SigningKey",
    "SqliteStore",
    # errors
    "RepredError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "IncompatiblePeerError",
    "PeerClosed",
    "SyncTimeout",
    "StoreError",
    "SubscriptionOverflow",
    # submodules
    "protocol",
    "types",
}


def test_the_top_level_is_small_and_exact():
    assert set(repred.__all__) == TOP_LEVEL
    for name in repred.__all__:
        assert hasattr(repred, name)


def test_the_protocol_module_holds_the_sans_io_names():
    for name in [
        "Session",
        "SessionState",
        "SessionStatistics",
        "Digest",
        "SyncReceived",
        "PeerEOF",
        "TRANSITIONS",
        "DEFAULT_MAX_LINE_BYTES",
        "DEFAULT_MAX_DRIFT_MS",
        "DEFAULT_MAX_SOURCES",
        "check_value",
    ]:
        assert name in repred.protocol.__all__
        assert hasattr(repred.protocol, name)


def test_submodules_export_what_they_say():
    for module in (repred.protocol, repred.types):
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)
    assert callable(repred.testing.check_reducer)
    assert callable(repred.testing.MemoryNetwork)


def test_replica_methods_named_in_the_design():
    r = repred.repred(lambda s, u: u, None)
    for name in ["update", "state", "id", "clock", "history"]:
        assert hasattr(r, name)
    assert not hasattr(r, "replicate")  # one way to replicate: repred.replicate


def test_import_repred_loads_no_optional_stack():
    """SQLite, ed25519 and the WebSocket stack load when a program first
    uses them: a replica that needs none of them pays for none of them."""
    import subprocess
    import sys

    code = (
        "import sys, repred, repred.types;"
        " print(sorted(m for m in ('sqlite3', 'nacl', 'trio_websocket', 'h11')"
        " if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
