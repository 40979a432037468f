"""The store's one error type."""

from __future__ import annotations


class StoreError(Exception):
    """A store that cannot be opened, read or written as asked (named in the message)."""
