"""The replication protocol without I/O, and its records and limits.

:class:`Session` is one link's side of the protocol as a state machine:
feed it the bytes that arrived (:meth:`Session.receive_data`), send what it
produces (:meth:`Session.data_to_send`). The link functions of the top-level
package (:func:`repred.replicate` and the rest) drive one over a trio
stream; anything else that moves bytes can drive one too.

Everything here is pure: no trio, no sockets, no threads.
"""

from __future__ import annotations

from ._history import Entry as Entry
from ._replica import DEFAULT_MAX_AHEAD_MS as DEFAULT_MAX_AHEAD_MS
from ._replica import DEFAULT_MAX_DRIFT_MS as DEFAULT_MAX_DRIFT_MS
from ._replica import DEFAULT_MAX_SOURCES as DEFAULT_MAX_SOURCES
from ._session import DEFAULT_BATCH_BYTES as DEFAULT_BATCH_BYTES
from ._session import DEFAULT_BATCH_ENTRIES as DEFAULT_BATCH_ENTRIES
from ._session import TRANSITIONS as TRANSITIONS
from ._session import PeerEOF as PeerEOF
from ._session import Session as Session
from ._session import SessionState as SessionState
from ._session import SessionStatistics as SessionStatistics
from ._session import SyncReceived as SyncReceived
from ._wire import DEFAULT_MAX_LINE_BYTES as DEFAULT_MAX_LINE_BYTES
from ._wire import KEEPALIVE as KEEPALIVE
from ._wire import MAX_DEPTH as MAX_DEPTH
from ._wire import MAX_SAFE_INTEGER as MAX_SAFE_INTEGER
from ._wire import MAX_SOURCE_LENGTH as MAX_SOURCE_LENGTH
from ._wire import MAX_STAMP as MAX_STAMP
from ._wire import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._wire import SYNC as SYNC
from ._wire import Digest as Digest
from ._wire import Snapshot as Snapshot
from ._wire import check_value as check_value

__all__ = [
    "DEFAULT_BATCH_BYTES",
    "DEFAULT_BATCH_ENTRIES",
    "DEFAULT_MAX_AHEAD_MS",
    "DEFAULT_MAX_DRIFT_MS",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MAX_SOURCES",
    "KEEPALIVE",
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "MAX_SOURCE_LENGTH",
    "MAX_STAMP",
    "PROTOCOL_VERSION",
    "SYNC",
    "TRANSITIONS",
    "Digest",
    "Entry",
    "PeerEOF",
    "Session",
    "SessionState",
    "SessionStatistics",
    "Snapshot",
    "SyncReceived",
    "check_value",
]
