"""repred: replicated reducers over trio streams, with no central server.

>>> import repred
>>> def union(state, update):
...     change = [x for x in update if x not in state]
...     state.update(change)
...     return change
>>> names = repred.repred(union, set())
>>> names.update(["jim"])
['jim']
"""

from __future__ import annotations

from . import types as types
from ._errors import IncompatiblePeerError as IncompatiblePeerError
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import PeerClosed as PeerClosed
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import ReplicaError as ReplicaError
from ._errors import SyncTimeout as SyncTimeout
from ._gossip import Peer as Peer
from ._gossip import PeerStatistics as PeerStatistics
from ._gossip import open_peer as open_peer
from ._history import Entry as Entry
from ._replica import DEFAULT_MAX_AHEAD_MS as DEFAULT_MAX_AHEAD_MS
from ._replica import DEFAULT_MAX_DRIFT_MS as DEFAULT_MAX_DRIFT_MS
from ._replica import DEFAULT_MAX_SOURCES as DEFAULT_MAX_SOURCES
from ._replica import Replica as Replica
from ._replica import repred as repred
from ._session import SessionState as SessionState
from ._session import SessionStatistics as SessionStatistics
from ._session import SyncSession as SyncSession
from ._store import SqliteStore as SqliteStore
from ._store import StoreError as StoreError
from ._trio import Change as Change
from ._trio import Connection as Connection
from ._trio import ConnectionStatistics as ConnectionStatistics
from ._trio import Subscription as Subscription
from ._trio import SubscriptionOverflow as SubscriptionOverflow
from ._trio import connect_tcp as connect_tcp
from ._trio import replicate as replicate
from ._trio import serve_tcp as serve_tcp
from ._trio import subscribe as subscribe
from ._wire import DEFAULT_MAX_LINE_BYTES as DEFAULT_MAX_LINE_BYTES
from ._wire import Digest as Digest

__all__ = [
    "DEFAULT_MAX_AHEAD_MS",
    "DEFAULT_MAX_DRIFT_MS",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MAX_SOURCES",
    "Change",
    "Connection",
    "ConnectionStatistics",
    "Digest",
    "Entry",
    "IncompatiblePeerError",
    "LocalProtocolError",
    "Peer",
    "PeerClosed",
    "PeerStatistics",
    "ProtocolError",
    "RemoteProtocolError",
    "Replica",
    "ReplicaError",
    "SessionState",
    "SessionStatistics",
    "SqliteStore",
    "StoreError",
    "Subscription",
    "SubscriptionOverflow",
    "SyncSession",
    "SyncTimeout",
    "connect_tcp",
    "open_peer",
    "replicate",
    "repred",
    "serve_tcp",
    "subscribe",
    "types",
]
