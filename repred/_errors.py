"""The exception hierarchy.

Every error repred raises on purpose derives from :class:`RepredError`.
Whose fault it was decides the class: :class:`LocalProtocolError` means the
caller misused the API, :class:`RemoteProtocolError` means the peer sent
something it must not. Construction-time misuse stays a plain ``TypeError``
or ``ValueError``. :class:`ReducerCheckFailed`, what the reducer checker
of :mod:`repred.testing` finds, is an ``AssertionError``, as test runners
expect of a failed check.
"""

from __future__ import annotations

__all__ = [
    "IncompatiblePeerError",
    "LocalProtocolError",
    "PeerClosed",
    "PortalClosed",
    "ProtocolError",
    "ReducerCheckFailed",
    "RemoteProtocolError",
    "RepredError",
    "StoreError",
    "SubscriptionOverflow",
    "SyncTimeout",
]


class RepredError(Exception):
    """Base class of every error repred raises on purpose."""


class ProtocolError(RepredError):
    """Something broke the replication protocol.

    Not raised directly: see its two subclasses.
    """


class LocalProtocolError(ProtocolError):
    """This side used the API in a way the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow.

    The connection it came on is closed; the replica's state, clock and
    history are exactly as they were before the offending message.

    Attributes:
        reason: a short, stable, machine-readable reason
            (``"malformed-json"``, ``"line-too-long"``, ...).
        line: the offending line (possibly truncated), when there is one.
    """

    def __init__(self, message: str, *, reason: str, line: bytes | None = None):
        super().__init__(message)
        self.reason = reason
        self.line = line


class IncompatiblePeerError(RemoteProtocolError):
    """The peer replicates another type of replica, or an unknown protocol."""


class PeerClosed(RepredError):
    """The peer went away before the sync was complete."""


class SyncTimeout(RepredError):
    """The peer stopped reading (or answering) for longer than allowed."""


class StoreError(RepredError):
    """The store cannot be used: in use, not a repred store, damaged, or a
    write that could not be made durable."""


class PortalClosed(RepredError):
    """A call reached a portal that is closed, or closed while it ran (see
    :mod:`repred.aio`)."""


class SubscriptionOverflow(RepredError):
    """A subscriber fell further behind than its buffer allows."""


class ReducerCheckFailed(AssertionError):
    """A reducer broke a property convergence needs (the message says which)."""
