"""Built-in replicated types, each a short reducer on the one primitive.

The API reference tables each one's change shape and merge rule.
"""

from __future__ import annotations

from ._doc import Doc, DocSeq, DocSet, doc
from ._events import Events, events
from ._lww import Counter, Heartbeats, Register, counter, heartbeats, register
from ._model import Model, model
from ._seq import Seq, seq
from ._sets import GSet, ORSet, TwoPhaseSet, gset, orset, two_phase_set

__all__ = [
    "Counter",
    "Doc",
    "DocSeq",
    "DocSet",
    "Events",
    "GSet",
    "Heartbeats",
    "Model",
    "ORSet",
    "Register",
    "Seq",
    "TwoPhaseSet",
    "counter",
    "doc",
    "events",
    "gset",
    "heartbeats",
    "model",
    "orset",
    "register",
    "seq",
    "two_phase_set",
]
