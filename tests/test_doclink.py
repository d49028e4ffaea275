"""Document links, without I/O: opening, answering, closing, acknowledging,
probing, and what a hostile peer cannot make a node do."""

import attrs
import pytest

import repred
from repred import LinkOptions
from repred._doclink import (
    MAX_LINK_DOCUMENTS,
    DocChannel,
    check_document_name,
    covers,
)
from repred.types import model

OPTIONS = attrs.evolve(LinkOptions(), antientropy_interval=None)


class Host:
    """A node's side: holds what it is given, or refuses with ``refusal``."""

    def __init__(self, refusal=None):
        self.replicas = {}
        self.refusal = refusal
        self.asked = []
        self.released_names = []

    def accept(self, peer, name, type_name):
        self.asked.append(name)
        if self.refusal is not None:
            return self.refusal
        if name not in self.replicas:
            self.replicas[name] = model()
        return self.replicas[name]

    def released(self, name, replica):
        self.released_names.append(name)

    def clock(self, name):
        replica = self.replicas.get(name)
        return None if replica is None else replica.clock


def channel(node, host, copies=3, **kw):
    changed = []
    ch = DocChannel(node, copies, host, OPTIONS, on_change=changed.append, **kw)
    ch.changed = changed
    return ch


def pair(a_host=None, b_host=None):
    a = channel("127.0.0.1:1", a_host or Host())
    b = channel("127.0.0.1:2", b_host or Host())
    return a, b


def pump(a, b, rounds=100):
    for _ in range(rounds):
        x, y = a.data_to_send(), b.data_to_send()
        if not x and not y:
            return
        if x:
            b.feed(x)
        if y:
            a.feed(y)
    raise AssertionError("the channels never went quiet")


def hello(copies=3, node="127.0.0.1:9"):
    return b'{"repred-docs":1,"node":"%s","copies":%d}\n' % (node.encode(), copies)


def fed(line, host=None):
    """A channel that has taken a peer's hello and then ``line``."""
    ch = channel("127.0.0.1:1", host or Host())
    ch.feed(hello())
    ch.feed(line)
    return ch


# -- names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a", "data", "Recipes-2024.v1", "x_y", "9", "a" * 128, "a..b"]
)
def test_good_document_names(name):
    assert check_document_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "a" * 129, "../etc", "a/b", ".hidden", "_members", "-x", "a b", "é", "a\n"],
)
def test_bad_document_names(name):
    with pytest.raises(ValueError, match="bad document name"):
        check_document_name(name)


def test_a_document_name_is_a_str():
    with pytest.raises(TypeError):
        check_document_name(b"data")


def test_covers_is_per_source():
    assert covers({"a": 2, "b": 1}, {"a": 2})
    assert covers({"a": 2}, {})
    assert not covers({"a": 1}, {"a": 2})
    assert not covers({"a": 2}, {"a": 2, "b": 1})
    assert not covers(None, {})


# -- opening, syncing, acknowledging -----------------------------------------


def test_an_open_document_syncs_and_the_owner_says_it_holds_it():
    a, b = pair()
    doc = model()
    doc.set("k", 1)
    a.open("data", doc)
    pump(a, b)
    held = b.docs["data"]
    assert held.replica.to_dict() == {"k": 1}
    mine = a.docs["data"]
    assert mine.state == "open"
    assert mine.synced
    assert covers(mine.known, doc.clock)
    # A write here reaches the owner, whose clock line says it holds it.
    doc.set("k", 2)
    assert not covers(mine.known, doc.clock)
    pump(a, b)
    assert held.replica.get("k") == 2
    assert covers(mine.known, doc.clock)
    assert "data" in a.changed


def test_a_clock_line_is_sent_only_when_something_moved():
    a, b = pair()
    doc = model()
    a.open("data", doc)
    pump(a, b)
    before = (a.bytes_out, b.bytes_out)
    a.keepalive()
    pump(a, b)
    assert b"clock" not in a.data_to_send() + b.data_to_send()
    assert b.bytes_out - before[1] == 0  # a keep-alive is not answered


def test_the_owner_hears_of_entries_it_gained_elsewhere():
    # The owner's copy gains an entry from another link: its clock line
    # says so to the node that opened it, so that node counts it too.
    a, b = pair()
    doc = model()
    a.open("data", doc)
    pump(a, b)
    elsewhere = model()
    elsewhere.set("x", 1)
    b.docs["data"].replica.apply(list(elsewhere.history()))
    pump(a, b)
    assert covers(a.docs["data"].known, elsewhere.clock)


def test_a_refused_open_says_why_and_can_be_asked_again():
    a, b = pair(b_host=Host(refusal="not-owner"))
    a.open("data", model())
    pump(a, b)
    assert a.docs["data"].state == "refused"
    assert a.docs["data"].reason == "not-owner"
    assert b.refused == 1
    assert "data" not in b.docs
    a.open("data", model())
    assert a.docs["data"].state == "opening"


def test_a_document_of_another_type_is_refused_by_the_host():
    class Typed(Host):
        def accept(self, peer, name, type_name):
            if type_name != "model":
                return "type"
            return super().accept(peer, name, type_name)

    a, b = pair(b_host=Typed())
    a.open("data", repred.types.gset())
    pump(a, b)
    assert a.docs["data"].reason == "type"


# -- closing ---------------------------------------------------------------------


def test_close_is_answered_and_releases_the_owners_session():
    a, b = pair()
    a.open("data", model())
    pump(a, b)
    a.close("data")
    assert a.docs["data"].state == "closing"
    pump(a, b)
    assert "data" not in a.docs
    assert "data" not in b.docs
    assert b._host.released_names == ["data"]


def test_crossing_closes_end_both_sides():
    a, b = pair()
    a.open("data", model())
    pump(a, b)
    a.close("data")
    b.close("data")
    pump(a, b)
    assert not a.docs
    assert not b.docs


def test_lines_on_their_way_after_a_close_are_dropped():
    a, b = pair()
    doc = model()
    a.open("data", doc)
    pump(a, b)
    owner = b.docs["data"].replica
    owner.set("late", 1)  # the owner sends it...
    late = b.data_to_send()
    a.close("data")  # ...while this side closes
    a.feed(late)  # dropped, not refused
    pump(a, b)
    assert not a.docs
    assert not b.docs


def test_a_document_opened_again_while_closing_reopens_after_the_answer():
    a, b = pair()
    doc = model()
    a.open("data", doc)
    pump(a, b)
    a.close("data")
    a.open("data", doc)
    pump(a, b)
    assert a.docs["data"].state == "open"
    assert b.docs["data"].state == "open"


def test_closing_before_the_answer_closes_after_it():
    a, b = pair()
    a.open("data", model())
    a.close("data")
    pump(a, b)
    assert not a.docs
    assert not b.docs


def test_the_end_of_a_link_gives_back_its_documents():
    a, b = pair()
    a.open("data", model())
    pump(a, b)
    docs = b.end()
    assert [d.name for d in docs] == ["data"]
    assert not docs[0].ours
    assert b.closed
    assert not b.sessions


# -- probes ----------------------------------------------------------------------


def test_a_probe_is_answered_with_the_clock_or_nothing():
    host = Host()
    held = host.replicas["data"] = model()
    held.set("k", 1)
    a, b = pair(b_host=host)
    a.probe("data")
    a.probe("other")
    a.probe("data")  # one outstanding per name
    pump(a, b)
    assert a.answers == {"data": dict(held.clock), "other": None}
    assert not b.docs  # nothing opened


def test_probes_a_peer_does_not_read_the_answers_to_cost_one_answer():
    # An answer holds the document's whole clock: queued once per probe, a
    # few bytes each, while the peer read nothing, it cost the node 44,000
    # times what the peer sent.
    host = Host()
    held = host.replicas["data"] = model()
    for i in range(100):
        held.apply([(["k", i], i + 1, f"source-{i}")])
    b = fed(b"1\t\t" + b'{"probe":"data"}\n', host)
    b.feed(b"".join(b'%d\t\t{"probe":"data"}\n' % (i + 2) for i in range(2000)))
    out = b.data_to_send()
    assert out.count(b'"held"') == 1
    assert len(out) < 10_000


def test_a_peer_probing_more_names_than_a_link_takes_is_cut():
    b = fed(b"")
    lines = b"".join(
        b'%d\t\t{"probe":"doc%d"}\n' % (i + 1, i) for i in range(MAX_LINK_DOCUMENTS + 1)
    )
    with pytest.raises(repred.RemoteProtocolError, match="probes"):
        b.feed(lines)


# -- what a peer cannot do ----------------------------------------------------------


def test_a_peer_whose_opens_are_all_refused_is_cut():
    # Each refusal costs the node a placement over every member: a peer
    # that names documents this node does not hold, again and again, is
    # cut once it has had as many refusals in a row as a link takes
    # sessions.
    host = Host(refusal="not-owner")
    b = channel("127.0.0.1:2", host)
    b.feed(hello())
    lines = b"".join(
        b'%d\t\t{"open":"doc%d","type":"model"}\n' % (i + 1, i)
        for i in range(MAX_LINK_DOCUMENTS + 1)
    )
    with pytest.raises(repred.RemoteProtocolError, match="refused"):
        b.feed(lines)
    assert len(host.asked) == MAX_LINK_DOCUMENTS


def test_a_peer_naming_thousands_of_documents_gets_at_most_the_bound():
    host = Host()
    b = channel("127.0.0.1:2", host)
    b.feed(hello())
    lines = b"".join(
        b'%d\t\t{"open":"doc%d","type":"model"}\n' % (i + 1, i) for i in range(3000)
    )
    b.feed(lines)
    assert len(host.asked) == MAX_LINK_DOCUMENTS
    assert len(b.docs) == MAX_LINK_DOCUMENTS
    assert b.refused == 3000 - MAX_LINK_DOCUMENTS
    assert b.data_to_send().count(b'"reason":"busy"') == 3000 - MAX_LINK_DOCUMENTS


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'1\t\t{"open":"../x","type":"model"}\n', "bad-document-name"),
        (b'1\t\t{"open":"","type":"model"}\n', "bad-document-name"),
        (b'1\t\t{"open":7,"type":"model"}\n', "bad-document-name"),
        (b'1\t\t{"open":"%s","type":"model"}\n' % (b"a" * 129), "bad-document-name"),
        (b'1\t\t{"open":"d","type":7}\n', "bad-control"),
        (b'1\t\t{"open":"d"}\n', "bad-control"),
        (b'1\t\t{"open":"d","type":"m","x":1}\n', "bad-control"),
        (b'1\t\t{"frobnicate":"d"}\n', "bad-control"),
        (b"1\t\t[1,2]\n", "bad-control"),
        (b'1\t\t{"accept":"d"}\n', "unexpected-answer"),
        (b'1\t\t{"refuse":"d","reason":"x"}\n', "unexpected-answer"),
        (b'1\t\t{"held":"d","at":null}\n', "unexpected-answer"),
        (b'1\t\t{"close":"d"}\n', "unknown-document"),
        (b'1\t\t{"clock":"d","at":{}}\n', "unknown-document"),
        (b'1\td\t{"id":"x","clock":{}}\n', "unknown-document"),
        (b'2\t\t{"keepalive":"KEEPALIVE"}\n', "out-of-order"),
        (b"1 no tabs\n", "bad-line"),
        (b'1\t\t{"open":"d","open":"e","type":"model"}\n', "duplicate-key"),
    ],
)
def test_bad_lines_end_the_link_with_a_reason(line, reason):
    with pytest.raises(repred.RemoteProtocolError) as info:
        fed(line)
    assert info.value.reason == reason


def test_opening_twice_is_refused():
    with pytest.raises(repred.RemoteProtocolError) as info:
        fed(b'1\t\t{"open":"d","type":"model"}\n2\t\t{"open":"d","type":"model"}\n')
    assert info.value.reason == "duplicate-open"


def bad_clock_after_open(at):
    b = channel("127.0.0.1:2", Host())
    a = channel("127.0.0.1:1", Host())
    a.open("d", model())
    pump(a, b)
    seq = a._seq_out + 1
    b.feed(b'%d\t\t{"clock":"d","at":%s}\n' % (seq, at))


@pytest.mark.parametrize(
    "at",
    [b"[]", b'{"":1}', b'{"s":-1}', b'{"s":"1"}', b'{"s":1e300}', b'{"__proto__":1}'],
)
def test_bad_clocks_are_refused(at):
    with pytest.raises(repred.RemoteProtocolError) as info:
        bad_clock_after_open(at)
    assert info.value.reason == "bad-clock"


def test_a_clock_naming_too_many_sources_is_refused():
    at = b"{" + b",".join(b'"s%d":1' % i for i in range(16_385)) + b"}"
    with pytest.raises(repred.RemoteProtocolError) as info:
        bad_clock_after_open(at)
    assert info.value.reason == "bad-clock"


def test_clocks_that_add_up_past_the_bound_are_refused():
    b = channel("127.0.0.1:2", Host())
    a = channel("127.0.0.1:1", Host())
    a.open("d", model())
    pump(a, b)
    lines = b"".join(
        b'%d\t\t{"clock":"d","at":{%s}}\n'
        % (
            b._seq_out + part + 1,
            b",".join(b'"s%d_%d":1' % (part, i) for i in range(6000)),
        )
        for part in range(3)
    )
    with pytest.raises(repred.RemoteProtocolError) as info:
        a.feed(lines)
    assert info.value.reason == "too-many-sources"


@pytest.mark.parametrize(
    "first",
    [
        b'{"repred-peer":2,"node":"x:1","replicas":{}}\n',
        b'{"repred-docs":2,"node":"127.0.0.1:9","copies":3}\n',
        b'{"repred-docs":1,"node":"0.0.0.0:9","copies":3}\n',
        b'{"repred-docs":1,"node":"127.0.0.1:9"}\n',
        b"[]\n",
    ],
)
def test_a_link_that_does_not_open_with_a_document_hello_is_refused(first):
    with pytest.raises(repred.RemoteProtocolError) as info:
        channel("127.0.0.1:1", Host()).feed(first)
    assert info.value.reason == "not-a-peer"


def test_nodes_that_keep_different_copies_do_not_link():
    with pytest.raises(repred.RemoteProtocolError) as info:
        channel("127.0.0.1:1", Host()).feed(hello(copies=2))
    assert info.value.reason == "copies-mismatch"
