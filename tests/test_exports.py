"""The public names the documentation and users rely on, and nothing more."""

import repred
import repred.protocol
import repred.testing
import repred.types

TOP_LEVEL = {
    # the primitive
    "repred",
    "Replica",
    "ReplicaOptions",
    "ReducerOptions",
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
    "StoreContents",
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


def test_every_exception_class_lives_in_one_module():
    """The errors a program catches are defined in repred._errors (the
    store's own StoreError aside), whichever module raises them, and stay
    importable where they always were."""
    import importlib
    import pkgutil

    import repred._errors

    homes = {}
    for info in pkgutil.walk_packages(repred.__path__, "repred."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException):
                public = not value.__name__.startswith("_")
                if public and value.__module__.startswith("repred."):
                    homes[value.__name__] = value.__module__
    homes.pop("StoreError")
    assert set(homes.values()) == {"repred._errors"}, homes
    assert repred.SubscriptionOverflow is repred._errors.SubscriptionOverflow
    assert repred.testing.ReducerCheckFailed is repred._errors.ReducerCheckFailed


def _public_namespaces():
    return [repred, repred.types, repred.protocol, repred.testing]


def _repred_classes():
    """Every class defined in a module of repred, by name."""
    import importlib
    import pkgutil

    found = {}
    for info in pkgutil.walk_packages(repred.__path__, "repred."):
        for value in vars(importlib.import_module(info.name)).values():
            if isinstance(value, type) and value.__module__.startswith("repred"):
                found.setdefault(value.__name__, value)
    return found


def _annotations_reachable(obj):
    """The annotations a program meets through ``obj``: a function's whole
    signature; a class's public methods' and properties' return types and
    its attrs fields' types."""
    import inspect

    import attrs

    if not isinstance(obj, type):
        yield from inspect.get_annotations(obj).values()
        return
    if attrs.has(obj):
        yield from (field.type for field in attrs.fields(obj))
    for name, member in vars(obj).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            member = member.fget
        if callable(member):
            yield inspect.get_annotations(member).get("return", "")


def test_nothing_private_is_reachable_from_a_public_name():
    """Every repred class that a public function or class names in its
    annotations (what it returns, takes, or holds) is public too: a program
    can import it, and the reference documents it."""
    import re

    classes = _repred_classes()
    public = {
        id(value)
        for space in _public_namespaces()
        for value in vars(space).values()
        if isinstance(value, type)
    }
    offending = set()
    for space in _public_namespaces():
        for name, value in vars(space).items():
            if name.startswith("_") or not callable(value):
                continue
            if not getattr(value, "__module__", "").startswith("repred"):
                continue
            for annotation in _annotations_reachable(value):
                for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", str(annotation)):
                    named = classes.get(word)
                    if named is not None and id(named) not in public:
                        offending.add(f"{space.__name__}.{name} -> {word}")
    assert not offending, sorted(offending)
