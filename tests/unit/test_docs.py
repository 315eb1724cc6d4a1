"""The README stays a short manual, its links resolve, and every setting is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobpub.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
README_LIMIT = 12_000  # bytes, as `wc -c` counts: a manual a newcomer reads, not a notebook

DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]

_FENCED_CODE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK_TARGET = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_SETTING = re.compile(r"JOBPUB_[A-Z0-9_]+")


def _prose(text: str) -> str:
    """The text without code, where `](` is not a link."""
    return _INLINE_CODE.sub("", _FENCED_CODE.sub("", text))


def _anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    slugs = set()
    for heading in _HEADING.findall(_FENCED_CODE.sub("", text)):
        plain = _INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading).lower()
        slugs.add(re.sub(r"[^\w\- ]", "", plain).replace(" ", "-"))
    return slugs


OPERATIONS = ROOT / "docs" / "operations.md"


def _settings_table_variables(page: Path = OPERATIONS, heading: str = "All settings") -> set[str]:
    """The JOBPUB_* names in the first column of the settings table under `heading`."""
    section = page.read_text(encoding="utf-8").split(f"\n## {heading}\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return {name for row in rows for name in _SETTING.findall(row.split("|")[1])}


def test_the_readme_is_a_short_manual() -> None:
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md has {size:,} characters; at most {README_LIMIT:,}"


def test_the_docs_directory_has_pages() -> None:
    names = {path.name for path in DOCUMENTS}
    assert {"architecture.md", "reliability.md", "performance.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(document: Path) -> None:
    broken = []
    for target in _LINK_TARGET.findall(_prose(document.read_text(encoding="utf-8"))):
        if _SCHEME.match(target):
            continue  # a web address: not checked offline
        path_part, _, fragment = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif (
            fragment
            and linked.suffix == ".md"
            and fragment not in _anchors(linked.read_text(encoding="utf-8"))
        ):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{document.relative_to(ROOT)}: broken links: {broken}"


def test_every_setting_is_in_the_operations_settings_table() -> None:
    prefix = Settings.model_config.get("env_prefix", "")
    assert prefix == "JOBPUB_"
    defined = {prefix + name.upper() for name in Settings.model_fields}
    missing = defined - _settings_table_variables()
    assert not missing, f"settings missing from docs/operations.md's table: {sorted(missing)}"


@pytest.mark.parametrize(
    ("page", "heading"), [(OPERATIONS, "All settings"), (README, "Settings")], ids=["all", "readme"]
)
def test_settings_tables_name_no_setting_that_does_not_exist(page: Path, heading: str) -> None:
    prefix = Settings.model_config.get("env_prefix", "")
    defined = {prefix + name.upper() for name in Settings.model_fields}
    unknown = _settings_table_variables(page, heading) - defined
    assert not unknown, f"{page.name} documents settings that do not exist: {sorted(unknown)}"


def test_the_readme_rows_read_as_in_the_full_table() -> None:
    """A setting the README shows is described as the full table describes it."""
    full = {line for line in OPERATIONS.read_text(encoding="utf-8").splitlines()
            if line.startswith("| `JOBPUB")}  # fmt: skip
    readme = README.read_text(encoding="utf-8").split("\n## Settings\n", 1)[1]
    rows = [line for line in readme.split("\n## ", 1)[0].splitlines() if line.startswith("| `")]
    assert rows, "the README's Settings section has no table"
    assert not [row for row in rows if row not in full]
