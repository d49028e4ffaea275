"""Built-in replicated types, each a short reducer on the one primitive."""

from __future__ import annotations

from ._model import Model, model

__all__ = ["Model", "model"]
