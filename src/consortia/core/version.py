"""The installed consortia's version, as the ledger and the compliance report record it."""

from __future__ import annotations

import importlib.metadata


def consortia_version() -> str:
    """pyproject.toml's version of the installed package. A source tree used without an
    install has none, and the records say so rather than guess."""
    try:
        return importlib.metadata.version("consortia")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"
