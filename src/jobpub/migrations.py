"""The packaged SQL migrations, in version order."""

from __future__ import annotations

from importlib import resources


def scripts() -> list[tuple[int, str, str]]:
    """(version, name, sql) for each `sql/NNNN_name.sql` shipped in the package."""
    found = []
    for entry in resources.files("jobpub").joinpath("sql").iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append((int(version), rest.removesuffix(".sql"), entry.read_text("utf-8")))
    return sorted(found)
