"""repred: replicated reducers over trio streams, with no central server.

>>> import repred
>>> def union(state, update):
...     change = [x for x in update if x not in state]
...     state.update(change)
...     return change
>>> names = repred.repred(union, set())
>>> names.update(["jim"])
['jim']

The package holds the primitive and the links; :mod:`repred.types` the
built-in replicated types; :mod:`repred.protocol` the protocol without I/O
(sessions, their events and the limits); :mod:`repred.testing` the reducer
checker and the simulated network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import protocol as protocol
from . import types as types
from ._connection import Connection as Connection
from ._connection import ConnectionStatistics as ConnectionStatistics
from ._divergence import Divergence as Divergence
from ._divergence import ReplicaStatistics as ReplicaStatistics
from ._errors import IncompatiblePeerError as IncompatiblePeerError
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import PeerClosed as PeerClosed
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import RepredError as RepredError
from ._errors import StoreError as StoreError
from ._errors import SubscriptionOverflow as SubscriptionOverflow
from ._errors import SyncTimeout as SyncTimeout
from ._gossip import Peer as Peer
from ._gossip import PeerStatistics as PeerStatistics
from ._gossip import open_peer as open_peer
from ._links import connect_tcp as connect_tcp
from ._links import replicate as replicate
from ._links import serve_tcp as serve_tcp
from ._members import Membership as Membership
from ._options import LinkOptions as LinkOptions
from ._options import PeerOptions as PeerOptions
from ._options import PlacementOptions as PlacementOptions
from ._options import Trust as Trust
from ._placed import DocumentStatistics as DocumentStatistics
from ._placement import owners as owners
from ._replica import ReducerOptions as ReducerOptions
from ._replica import Replica as Replica
from ._replica import ReplicaOptions as ReplicaOptions
from ._replica import repred as repred
from ._store import SqliteStore as SqliteStore
from ._store import StoreContents as StoreContents
from ._subscribe import Change as Change
from ._subscribe import Subscription as Subscription
from ._subscribe import subscribe as subscribe
from ._transport import Transport as Transport
from ._trust import SigningKey as SigningKey

__all__ = [
    "Connection",
    "Divergence",
    "IncompatiblePeerError",
    "LocalProtocolError",
    "Peer",
    "PeerClosed",
    "ProtocolError",
    "ReducerOptions",
    "RemoteProtocolError",
    "Replica",
    "ReplicaOptions",
    "RepredError",
    "SigningKey",
    "SqliteStore",
    "StoreContents",
    "StoreError",
    "SubscriptionOverflow",
    "SyncTimeout",
    "connect_redis",
    "connect_tcp",
    "connect_websocket",
    "open_peer",
    "owners",
    "protocol",
    "replicate",
    "repred",
    "serve_tcp",
    "serve_websocket",
    "subscribe",
    "types",
]

if TYPE_CHECKING:
    from ._redis import RedisLink as RedisLink
    from ._redis import RedisOptions as RedisOptions
    from ._redis import RedisStatistics as RedisStatistics
    from ._redis import connect_redis as connect_redis
    from ._websocket import connect_websocket as connect_websocket
    from ._websocket import serve_websocket as serve_websocket


def __getattr__(name: str) -> Any:
    # The WebSocket links load trio-websocket, wsproto and h11: only when
    # a program asks for them.
    if name in ("connect_websocket", "serve_websocket"):
        from . import _websocket

        return getattr(_websocket, name)
    if name in ("connect_redis", "RedisLink", "RedisOptions", "RedisStatistics"):
        # coredis is an extra: pip install 'repred[redis]'.
        from . import _redis

        return getattr(_redis, name)
    raise AttributeError(f"module 'repred' has no attribute {name!r}")


# Also importable from here, for annotations, though not names one needs to
# learn: the records the functions above return (Change, ConnectionStatistics,
# DocumentStatistics, Membership, PeerStatistics, ReplicaStatistics,
# Subscription, and RedisLink and RedisStatistics, with the redis extra), and
# the values and the protocol their options are described by (LinkOptions,
# PeerOptions, PlacementOptions, Trust, Transport, and RedisOptions with the
# redis extra).
