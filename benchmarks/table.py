"""Re-measure the documentation's performance table in one command.

Every row's benchmark runs RUNS times, each time as a fresh process (or the
pair of processes its script makes). A row with an anchor (JS scuttlebutt,
or another size or mode of the same sync) runs it in the same round,
alternately, in the same shape as repred's side: the same process count,
transport, keys and values (each script's docstring says how). Rounds go
over the whole table, one run of every row each, and the order within a
row is reversed every other round, so a change in the machine's load
weighs on every row and both sides of a comparison alike.

    python benchmarks/table.py [--runs N] [--write] [GROUP ...]
        (default: 5 runs of every group: sync, sync_1m, many_sources,
        live, local, noop, memory, durable, trust, junk, idle_links,
        placement, gossip, redis; redis needs redis-server on the PATH)

Prints every JSON line the scripts print, each run preceded by a
``table_run`` line (with the 1-minute load average before it); then one
``table`` line per figure: its median, min and max and how many values it
had (a script that times something several times, such as durable.py's
three reopenings, gives several a run), and one per ratio, taken round by
round (each side's median within the round); then one ``table_row`` line
per row of the table, as it would be written. With ``--write``, the
table's rows, each figure as median (min-max), replace the table between
the markers of docs/benchmarks.rst (measure every group for that: the
table is written whole).
The JS runs need node and ``npm ci`` in ``tests/js``; without them they
are left out, and the output says so.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from _common import report

HERE = Path(__file__).resolve().parent
PAGE = HERE.parent / "docs" / "benchmarks.rst"
# The table lies between these two comments of PAGE; --write replaces it.
START = ".. table.py writes the table below; edit benchmarks/table.py instead."
END = ".. table.py's table ends here."
NODE = shutil.which("node")
HAVE_JS = (
    NODE is not None
    and (HERE.parent / "tests" / "js" / "node_modules" / "scuttlebutt").is_dir()
)


def py(*args: str) -> list[str]:
    return [sys.executable, str(HERE / args[0]), *args[1:]]


def js(*args: str) -> list[str]:
    return [NODE or "node", str(HERE / args[0]), *args[1:]]


@dataclass
class Figure:
    """One number: ``key`` of the JSON lines ``variant`` printed, among
    those whose fields match ``where``, times ``scale``; shown with
    ``digits`` and ``unit``."""

    variant: str
    key: str
    digits: int
    unit: str = ""
    where: dict[str, object] = field(default_factory=dict)
    scale: float = 1.0

    def values(self, lines: list[dict]) -> list[float]:
        return [
            float(line[self.key]) * self.scale
            for line in lines
            if self.key in line and all(line.get(k) == v for k, v in self.where.items())
        ]


@dataclass
class Ratio:
    """Figure ``over`` / figure ``under``, round by round."""

    over: str
    under: str
    digits: int
    unit: str = ""


@dataclass
class Group:
    """Commands run one after another in each round, and the table's rows
    they fill: (what, repred's cell, JS's cell), each cell a format string
    over the names of the figures and ratios."""

    name: str
    variants: dict[str, list[str]]
    figures: dict[str, Figure]
    rows: list[tuple[str, str, str]]
    ratios: dict[str, Ratio] = field(default_factory=dict)
    lines: dict[str, list[list[dict]]] = field(default_factory=dict)

    def runnable(self) -> list[str]:
        return [v for v, c in self.variants.items() if HAVE_JS or c[1][-3:] != ".js"]


def _sync() -> Group:
    return Group(
        "sync",
        {
            "batches": py("full_sync.py", "100000"),
            "per_line": py("full_sync.py", "--per-line", "100000"),
            "websocket": py("full_sync.py", "--websocket", "100000"),
            "js": js("js_full_sync.js", "100000"),
        },
        {
            "batches": Figure("batches", "seconds", 3, " s"),
            "per_line": Figure("per_line", "seconds", 3, " s"),
            "websocket": Figure("websocket", "seconds", 3, " s"),
            "js": Figure("js", "seconds", 2, " s"),
            "bytes_batches": Figure("batches", "bytes_per_entry", 1),
            "bytes_per_line": Figure("per_line", "bytes_per_entry", 1),
            "bytes_js": Figure("js", "bytes_per_entry", 1),
        },
        [
            (
                "full sync, 100k keys, two processes over TCP"
                " (batches / one entry per line)",
                "{batches} / {per_line}; ratio to JS in the same round:"
                " {batches_js} / {per_line_js}",
                "{js}",
            ),
            (
                "bytes on the wire per entry, 100k keys (batches / one entry per line)",
                "{bytes_batches} / {bytes_per_line}",
                "{bytes_js}",
            ),
            ("full sync, 100k keys, over a WebSocket", "{websocket}", ""),
        ],
        {
            "batches_js": Ratio("batches", "js", 3),
            "per_line_js": Ratio("per_line", "js", 3),
        },
    )


def _sync_1m() -> Group:
    return Group(
        "sync_1m",
        {
            "large": py("full_sync.py", "1000000"),
            "small": py("full_sync.py", "100000"),
            "js": js("js_full_sync.js", "1000000"),
        },
        {
            "large": Figure("large", "seconds", 2, " s"),
            "small": Figure("small", "seconds", 3, " s"),
            "js": Figure("js", "seconds", 0, " s"),
        },
        [
            (
                "full sync, 1M keys, two processes over TCP (against 100k"
                " keys in the same round)",
                "{large}; {scaling} the 100k sync (each of the two tables a"
                " key goes into costs about twice as much per insert at 1M"
                " keys as at 100k); ratio to JS in the same round: {js_ratio}",
                "{js}",
            )
        ],
        {
            "scaling": Ratio("large", "small", 1, "x"),
            "js_ratio": Ratio("large", "js", 4),
        },
    )


def _many_sources() -> Group:
    name = "many_sources"
    return Group(
        name,
        {name: py("many_sources.py")},
        {
            "many": Figure(name, "writer_per_entry_seconds", 2, " s"),
            "one": Figure(name, "one_writer_seconds", 3, " s"),
            "ratio": Figure(name, "ratio", 0, "x"),
        },
        [
            (
                "full sync of 100k entries, from 100k writers against from"
                " one (in process)",
                "{many} / {one}; {ratio} (most of the difference is Python's"
                " collector walking three containers per source)",
                "",
            )
        ],
    )


def _live() -> Group:
    variants, figures = {}, {}
    for transport, processes in (("tcp", "1"), ("tcp", "2"), ("websocket", "1")):
        for burst in ("100", "1"):
            name = f"{transport}_{processes}_{burst}"
            extra = ["--websocket"] if transport == "websocket" else []
            extra += ["--processes", "2"] if processes == "2" else []
            variants[name] = py("live_stream.py", "200000", burst, *extra)
            figures[name] = Figure(name, "us_per_update", 1, " us")
    rows = [
        (
            "live streaming over TCP, per update, in bursts of 100 / yielding"
            " after each: both ends in one process; in two processes"
            " (``--processes 2``)",
            "{tcp_1_100} / {tcp_1_1}; {tcp_2_100} / {tcp_2_1}",
            "",
        ),
        (
            "the same over a WebSocket, one process",
            "{websocket_1_100} / {websocket_1_1}",
            "",
        ),
    ]
    return Group("live", variants, figures, rows)


def _local() -> Group:
    return Group(
        "local",
        {"local": py("local_update.py")},
        {
            "model": Figure("local", "us_per_update", 2, " us", {"type": "model"}),
            "gset": Figure("local", "us_per_update", 2, " us", {"type": "gset"}),
        },
        [
            (
                "local ``model().set`` / ``gset`` add (each value checked)",
                "{model} / {gset}",
                "",
            )
        ],
    )


def _noop() -> Group:
    return Group(
        "noop",
        {"noop": py("noop_round.py")},
        {
            "ae": Figure("noop", "ms_per_round", 2, " ms"),
            "plain": Figure("noop", "ms_per_round_without_antientropy", 3, " ms"),
        },
        [
            (
                "no-op sync round against 1M entries, with anti-entropy"
                " (which compares the hash trees' roots) / without",
                "{ae} / {plain}",
                "",
            )
        ],
    )


def _memory() -> Group:
    return Group(
        "memory",
        {"memory": py("memory.py")},
        {"rss": Figure("memory", "peak_rss_mb", 1, " MB")},
        [("1M sets over 100k keys: peak RSS", "{rss}", "")],
    )


def _durable() -> Group:
    name = "durable"
    full, batch = {"durability": "full"}, {"durability": "batch"}
    return Group(
        name,
        {name: py("durable.py")},
        {
            "full": Figure(name, "us_per_update", 0, " us", full),
            "batch": Figure(name, "us_per_update", 1, " us", batch),
            "replay": Figure(name, "seconds", 2, " s", {"kind": "replay"}),
            "resume": Figure(name, "seconds", 2, " s", {"kind": "checkpoint"}),
        },
        [
            (
                "durable update, committed before it returns / batch mode",
                "{full} / {batch}",
                "",
            ),
            (
                "reopening a 1M-entry store closed cleanly (every segment"
                " checked; three reopenings a run): replaying a plain reducer"
                " / resuming a ``gset`` from its saved state",
                "{replay} / {resume}",
                "",
            ),
        ],
    )


def _trust() -> Group:
    return Group(
        "trust",
        {"trust": py("trust.py")},
        {
            "sign": Figure("trust", "us_per_signed_write", 0, " us"),
            "verify": Figure("trust", "us_per_verification", 0, " us"),
        },
        [
            (
                "signed write / verifying an entry (ed25519, libsodium)",
                "{sign} / {verify}",
                "",
            )
        ],
    )


def _junk() -> Group:
    return Group(
        "junk",
        {"junk": py("junk_members.py")},
        {
            "median": Figure("junk", "get_ms_median", 1, " ms"),
            "worst": Figure("junk", "get_ms_max", 0, " ms"),
        },
        [
            (
                "``get`` typed into a peer holding 10,000 junk members: median / worst",
                "{median} / {worst}",
                "",
            )
        ],
    )


def _idle_links() -> Group:
    variants, figures = {}, {}
    for kind in ("tcp", "web"):
        variants[kind] = py("idle_links.py", "500", "800000", "--kind", kind)
        figures[f"{kind}_held"] = Figure(kind, "held_per_link_kb", 0, " KB")
        figures[f"{kind}_kept"] = Figure(kind, "kept_after_mb", 0, " MB")
    row = (
        "500 idle links each holding 781 KiB of a line, the server's RSS: per"
        " link while open / left once all are cut (TCP; over WebSockets)",
        "{tcp_held} / {tcp_kept}; {web_held} / {web_kept}",
        "",
    )
    return Group("idle_links", variants, figures, [row])


def _gossip() -> Group:
    sizes = (100, 300, 1000)
    figures = {}
    for n in sizes:
        for name, key, digits, scale in (
            ("formed", "rounds_to_full_membership", 2, 1.0),
            ("newcomer", "rounds_for_a_newcomer_to_be_known", 2, 1.0),
            # In link hops: a hop is a hundredth of a round.
            ("newcomer_hops", "rounds_for_a_newcomer_to_be_known", 0, 100.0),
            ("hops", "hops_for_a_write_to_reach_all", 0, 1.0),
            ("bytes", "bytes_per_node_per_round", 0, 1.0),
            ("per_member", "bytes_per_member_per_node_per_round", 1, 1.0),
            ("cpu", "cpu_ms_per_node_per_round", 1, 1.0),
        ):
            figures[f"{name}{n}"] = Figure(
                "gossip", key, digits, "", {"peers": n}, scale
            )
    rows = [
        (
            "simulated peers, 100 / 300 / 1,000 (10 ms links, 1 s heartbeats):"
            " every peer knowing every peer, all started at once; a newcomer"
            " known by all; a write reaching all",
            "{formed100} / {formed300} / {formed1000} rounds; {newcomer100} /"
            " {newcomer300} / {newcomer1000} rounds ({newcomer_hops100} /"
            " {newcomer_hops300} / {newcomer_hops1000} link hops); {hops100} /"
            " {hops300} / {hops1000} link hops",
            "",
        ),
        (
            "membership traffic and CPU per node per round at 100 / 300 / 1,000"
            " peers, once settled (the traffic stays flat as the peers grow:"
            " membership entries travel only on change, liveness comes from"
            " the links a node holds, and a link between agreeing maps opens"
            " with a fingerprint)",
            "{bytes100} / {bytes300} / {bytes1000} bytes ({per_member100} /"
            " {per_member300} / {per_member1000} bytes per member); CPU"
            " {cpu100} / {cpu300} /"
            " {cpu1000} ms a node",
            "",
        ),
    ]
    command = py("gossip_rounds.py", *map(str, sizes))
    return Group("gossip", {"gossip": command}, figures, rows)


def _redis() -> Group:
    name = "redis"
    figures = {}
    for via in ("redis", "tcp"):
        catch_up = {"bench": "catch_up", "via": via}
        figures[f"catch_up_{via}"] = Figure(name, "seconds", 3, " s", catch_up)
        live = {"bench": "live_latency", "via": via}
        figures[f"live_{via}"] = Figure(name, "median_us", 0, " us", live)
    figures["catch_up_ratio"] = Figure(name, "redis_over_tcp", 2, "x")
    for held, short in (
        ("image, stream trimmed", "trimmed"),
        ("image and whole stream", "whole"),
    ):
        where = {"bench": "redis_memory", "held": held}
        figures[f"memory_{short}"] = Figure(name, "bytes_per_key", 0, " bytes", where)
    rows = [
        (
            "a new replica catching up on 100k keys through Redis (a child"
            " process, from connect to synced) / a full sync over direct TCP",
            "{catch_up_redis} / {catch_up_tcp}; {catch_up_ratio} (the median"
            " of each run's three)",
            "",
        ),
        (
            "a live update reaching another replica through Redis / over a"
            " direct TCP link (both ends in one process), median",
            "{live_redis} / {live_tcp}",
            "",
        ),
        (
            "Redis memory per key held, 100k keys: the image with the stream"
            " trimmed behind it / the image and the whole stream",
            "{memory_trimmed} / {memory_whole}",
            "",
        ),
    ]
    return Group(name, {name: py("redis_link.py")}, figures, rows)


def _placement() -> Group:
    fifty = {"scheme": "rendezvous (repred.owners)"}
    return Group(
        "placement",
        {"placement": py("placement.py")},
        {
            "fast": Figure("placement", "seconds_prepared", 2, " s"),
            "fast_us": Figure("placement", "us_per_name_prepared", 0, " us"),
            # Its seconds are for three placements of 100,000 names.
            "fifty": Figure("placement", "seconds", 0, " us", fifty, 1e6 / 3e5),
        },
        [
            (
                "``owners()`` of 10,000 names over 1,000 members (members"
                " prepared once) / over 50 members",
                "{fast} ({fast_us} a name) / {fifty} a name",
                "",
            )
        ],
    )


GROUPS = (
    _sync,
    _sync_1m,
    _many_sources,
    _live,
    _local,
    _noop,
    _memory,
    _durable,
    _trust,
    _junk,
    _idle_links,
    _placement,
    _gossip,
    _redis,
)


def run(group: Group, round_: int, variant: str) -> list[dict]:
    """One run of one variant: its JSON lines (none if it failed)."""
    load = os.getloadavg()[0]
    report("table_run", group=group.name, round=round_, variant=variant, load=load)
    done = subprocess.run(
        group.variants[variant], capture_output=True, text=True, cwd=HERE
    )
    if done.returncode != 0:
        report("table_failed", variant=variant, stderr=done.stderr[-2000:])
        return []
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    for line in lines:
        print(json.dumps(line), flush=True)
    return lines


def measure(groups: list[Group], runs: int) -> None:
    """Fill each group's lines, variant by variant and run by run."""
    for group in groups:
        group.lines = {v: [] for v in group.runnable()}
        if len(group.lines) < len(group.variants):
            report("table_skipped", group=group.name, reason="no node or tests/js")
    for round_ in range(runs):
        for group in groups:
            order = list(group.lines)
            for variant in order if round_ % 2 == 0 else order[::-1]:
                group.lines[variant].append(run(group, round_, variant))


def _spread(values: list[float], digits: int, unit: str) -> str:
    """Median (min-max), or the one value when they all agree."""
    if not values:
        return "(not run)"
    mid, lo, hi = (
        f"{x:.{digits}f}" for x in (statistics.median(values), min(values), max(values))
    )
    return f"{mid}{unit}" if lo == hi else f"{mid}{unit} ({lo}-{hi})"


def summarise(group: Group) -> dict[str, str]:
    """Report every figure and ratio; return each as the table shows it."""
    per_run: dict[str, list[list[float]]] = {}
    cells: dict[str, str] = {}
    for name, figure in group.figures.items():
        per_run[name] = [figure.values(r) for r in group.lines.get(figure.variant, [])]
        values = [v for r in per_run[name] for v in r]
        cells[name] = _spread(values, figure.digits, figure.unit)
        _report(group.name, name, values)
    for name, ratio in group.ratios.items():
        # A side left out (no node) has no runs: the ratio is not run.
        pairs = zip(per_run[ratio.over], per_run[ratio.under], strict=False)
        values = [
            statistics.median(a) / statistics.median(b) for a, b in pairs if a and b
        ]
        cells[name] = _spread(values, ratio.digits, ratio.unit)
        _report(group.name, name, values, ratio=f"{ratio.over} / {ratio.under}")
    return cells


def _report(group: str, name: str, values: list[float], **extra: str) -> None:
    if values:
        report(
            "table",
            group=group,
            figure=name,
            **extra,
            median=statistics.median(values),
            min=min(values),
            max=max(values),
            values=len(values),
        )


def main() -> None:
    args = sys.argv[1:]
    runs = 5
    if "--runs" in args:
        i = args.index("--runs")
        runs = int(args.pop(i + 1))
        args.pop(i)
    if runs < 1:
        sys.exit("--runs must be at least 1")
    chosen = [a for a in args if not a.startswith("--")]
    if "--write" in args and chosen:
        sys.exit("--write writes the whole table: measure every group")
    groups = [g() for g in GROUPS]
    groups = [g for g in groups if not chosen or g.name in chosen]
    measure(groups, runs)
    rows = []
    for group in groups:
        cells = summarise(group)
        rows += [(w, a.format(**cells), b.format(**cells)) for w, a, b in group.rows]
    for what, ours, theirs in rows:
        report("table_row", what=what, repred=ours, js=theirs)
    if "--write" in args:
        write_rows(PAGE, rows, f"{runs} runs each: median (min-max)")


def write_rows(page: Path, rows: list[tuple[str, str, str]], caption: str) -> None:
    """Replace the table between the page's markers with these rows."""
    text = page.read_text()
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"{page} lacks the table's markers: {START!r}, {END!r}")
    before, rest = text.split(START)
    after = rest.split(END)[1]
    table = [f".. list-table:: {caption}", "   :header-rows: 1", ""]
    for row in [("what", "repred", "JS scuttlebutt"), *rows]:
        table += [f"   * - {row[0]}", *(f"     - {cell}" for cell in row[1:])]
    page.write_text(before + START + "\n\n" + "\n".join(table) + "\n\n" + END + after)


if __name__ == "__main__":
    main()
