"""The SQL migrations, in version order: shipped in the wheel, or read from the checkout."""

from __future__ import annotations

import re
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import NamedTuple

# An editable install (a checkout) has no jobpub/sql: the wheel gets it from the
# repository's top-level sql/ (pyproject.toml, force-include).
_CHECKOUT_SQL = Path(__file__).resolve().parents[2] / "sql"

# A file whose first line is this runs outside a transaction, one statement at a time:
# CREATE INDEX CONCURRENTLY refuses to run inside one. Each of its statements ends with
# `;` at the end of a line and must be safe to run again (IF NOT EXISTS).
NO_TRANSACTION_MARKER = "-- jobpub:no-transaction"
_STATEMENT_END = re.compile(r";[ \t]*$", re.MULTILINE)
_CONCURRENT_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE
)


class Migration(NamedTuple):
    version: int
    name: str
    sql: str

    @property
    def transactional(self) -> bool:
        return not self.sql.startswith(NO_TRANSACTION_MARKER)

    def statements(self) -> list[str]:
        """The statements of a no-transaction file, each to be sent on its own."""
        pieces = (_without_comments(piece) for piece in _STATEMENT_END.split(self.sql))
        return [piece for piece in pieces if piece]

    def concurrent_indexes(self) -> list[str]:
        """Indexes this file builds concurrently: a failed build leaves one INVALID."""
        return _CONCURRENT_INDEX.findall(self.sql)


def scripts() -> list[Migration]:
    """Each `NNNN_name.sql`, in version order."""
    found = []
    for entry in _directory().iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(
                Migration(int(version), rest.removesuffix(".sql"), entry.read_text("utf-8"))
            )
    return sorted(found)


def _without_comments(statement: str) -> str:
    lines = (line for line in statement.splitlines() if not line.lstrip().startswith("--"))
    return "\n".join(lines).strip()


def _directory() -> Traversable:
    packaged = resources.files("jobpub").joinpath("sql")
    return packaged if packaged.is_dir() else _CHECKOUT_SQL
