"""The user-error type the CLI shows as one line (defined with the data layer, which raises it too)."""
from __future__ import annotations

from data_prep.errors import UserError

__all__ = ["UserError"]
