"""The SQL migrations, in version order: shipped in the wheel, or read from the checkout."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

# An editable install (a checkout) has no jobpub/sql: the wheel gets it from the
# repository's top-level sql/ (pyproject.toml, force-include).
_CHECKOUT_SQL = Path(__file__).resolve().parents[2] / "sql"


def scripts() -> list[tuple[int, str, str]]:
    """(version, name, sql) for each `NNNN_name.sql`, in version order."""
    found = []
    for entry in _directory().iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append((int(version), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    return sorted(found)


def _directory() -> Traversable:
    packaged = resources.files("jobpub").joinpath("sql")
    return packaged if packaged.is_dir() else _CHECKOUT_SQL
