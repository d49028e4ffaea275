"""The public names the README and users rely on."""

import repred
import repred.testing
import repred.types


def test_public_names():
    for name in [
        "repred",
        "Replica",
        "replicate",
        "serve_tcp",
        "connect_tcp",
        "subscribe",
        "open_peer",
        "SqliteStore",
        "StoreError",
        "ReplicaError",
        "ProtocolError",
        "LocalProtocolError",
        "RemoteProtocolError",
        "IncompatiblePeerError",
        "PeerClosed",
        "SyncTimeout",
        "SyncSession",
        "Connection",
    ]:
        assert name in repred.__all__
        assert hasattr(repred, name)
    for name in repred.types.__all__:
        assert hasattr(repred.types, name)
    assert callable(repred.testing.check_reducer)
    assert callable(repred.testing.MemoryNetwork)


def test_replica_methods_named_in_the_design():
    r = repred.repred(lambda s, u: u, None)
    for name in ["update", "state", "id", "clock", "history"]:
        assert hasattr(r, name)
