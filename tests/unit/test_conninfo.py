"""Connection strings: what jobpub accepts libpq parses, and redaction hides every password.

libpq's own parser (psycopg's conninfo_to_dict, PQconninfoParse) is the reference.
"""

from __future__ import annotations

from urllib.parse import quote

import psycopg
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from jobpub.conninfo import REDACTED, ConninfoError, check_conninfo, redact_conninfo

ACCEPTED = [
    "postgresql://db/jobs",
    "postgres://app@db:5432/jobs",
    "postgresql://app:s3cret@db:5432/jobs?sslmode=require",
    "postgresql://",
    "postgresql:///jobs?host=/var/run/postgresql",
    "postgresql://%2Fvar%2Frun%2Fpostgresql/jobs",
    "postgresql://h1,h2:5433/jobs?target_session_attrs=read-write",
    "postgresql://app:pw@h1:5432,h2:5433,h3/jobs?target_session_attrs=primary",
    "postgresql://[::1]:5432,[fe80::1%25eth0]/jobs",
    "postgresql://:5433/jobs",
    "postgresql://app@db/jobs?password=s3cret&connect_timeout=5",
    "postgresql://u%40x:p%3Aw%2F@db/jobs",
    "host=db dbname=jobs user=app password=s3cret",
    "host=h1,h2 port=5432,5433 dbname=jobs target_session_attrs=read-write",
    "host = db   password = 'it\\'s' dbname=jobs",
    r"host=db password='a b\'c\\' sslpassword=x\ y",
    "dbname=jobs",
]

REFUSED = [
    ("", "is empty"),
    ("   ", "is empty"),
    ("mysql://root:hunter2@db/x", "must start with postgresql://"),
    ("postgresql://db:hunter2/x", "invalid port"),
    ("postgresql://h1,h2:99999/x", "invalid port"),
    ("postgresql://h1,,h2/x", "empty host"),
    ("postgresql://[::1/x", "IPv6"),
    ("postgresql://[::1]x/x", "IPv6"),
    ("postgresql://u:hunter2%zz@db/x", "percent-encoding"),
    ("postgresql://db/x%00", "percent-encoding"),
    ("postgresql://db/x?hunter2", "not key=value"),
    ("postgresql://db/x?a=b=hunter2", "not key=value"),
    ("postgresql://db/x?Hunter2=1", "not a libpq option name"),
    ("host=db hunter2", 'without "="'),
    ("host=db password='hunter''2'", 'without "="'),
    ("host=db password='hunter2", "closing quote"),
    ("Hunter2=x", "not a libpq option name"),
    ("=hunter2", "not a libpq option name"),
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_what_jobpub_accepts_libpq_parses(text: str) -> None:
    check_conninfo(text)
    conninfo_to_dict(text)


@pytest.mark.parametrize(("text", "reason"), REFUSED)
def test_garbage_is_refused_with_a_reason_that_quotes_none_of_it(text: str, reason: str) -> None:
    with pytest.raises(ConninfoError) as caught:
        check_conninfo(text)
    assert reason in str(caught.value)
    assert "hunter2" not in str(caught.value).lower()


# jobpub is stricter than libpq's parser about ports (libpq checks them only when it
# connects), empty hosts in a list and empty strings (libpq then uses its defaults).
STRICTER = ("invalid port", "empty host", "is empty")


@pytest.mark.parametrize("text", [text for text, reason in REFUSED if reason not in STRICTER])
def test_libpq_refuses_the_garbage_too(text: str) -> None:
    with pytest.raises(psycopg.ProgrammingError):
        conninfo_to_dict(text)


def _libpq_reads(text: str) -> dict[str, object]:
    return {key: value for key, value in conninfo_to_dict(text).items() if value is not None}


def _redacted_as_libpq_reads_it(text: str) -> dict[str, object]:
    options = _libpq_reads(text)
    return {k: (REDACTED if k in ("password", "sslpassword") else v) for k, v in options.items()}


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://app:s3cret@db:5432/jobs",
        "postgresql://app:s3cret@h1:5432,h2:5433/jobs?target_session_attrs=read-write",
        "postgresql://app:s3cret@[::1]:5432,[::2]/jobs",
        "postgresql://app@db/jobs?password=s3cret",
        "postgresql://app@db/jobs?sslmode=require&password=s3cret&connect_timeout=5",
        "postgresql://app@db/jobs?pass%77ord=s3cret",
        "postgresql://app@h1,h2/jobs?sslpassword=s3cret&password=s3cret",
        "postgresql://app:s3%40cr%2Fet@db/jobs",
        "postgresql://app:s3?cret@db/jobs",
        "postgresql://app:s3cret@h1,h2/jobs?password=s3cret",
        "host=db user=app password=s3cret dbname=jobs",
        "host=db user=app password='s3 cret' dbname=jobs",
        r"host=db password='s3\'cr\\et' dbname=jobs",
        r"host=db password=s3\ cret dbname=jobs",
        "host=db password = s3cret dbname=jobs",
        "host=h1,h2 port=5432,5433 password=s3cret sslpassword=s3cret",
        "host=db password= dbname=jobs",
    ],
)
def test_redaction_removes_every_password_and_nothing_else(text: str) -> None:
    redacted = redact_conninfo(text)
    assert "s3" not in redacted
    assert _libpq_reads(redacted) == _redacted_as_libpq_reads_it(text)


def test_redaction_keeps_a_string_without_a_password_as_it_is() -> None:
    for text in ("postgresql://app@h1,h2:5433/jobs?sslmode=require", "host=db dbname=jobs"):
        assert redact_conninfo(text) == text


def test_a_connection_string_nested_in_dbname_is_redacted_whole() -> None:
    redacted = redact_conninfo("dbname='host=db password=s3cret' user=app")
    assert "s3cret" not in redacted
    assert redacted == "dbname=*** user=app"


def test_an_unparseable_string_is_redacted_whole() -> None:
    assert redact_conninfo("host=db password='s3cret") == REDACTED


def test_odd_urls_lose_their_password_whichever_way_they_are_read() -> None:
    # libpq ends a password at the first @, Python's urlsplit at the last: hide both.
    assert "ss" not in redact_conninfo("postgresql://u:p@ss@db/jobs")
    assert "cret" not in redact_conninfo("postgresql://db?password=s3@cret")
    assert "cret" not in redact_conninfo("postgresql://db/x?a=1?password=s3cret")


_SECRETS = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=8).filter(
    lambda s: s.strip() == s and len(set(s)) > 3
)


@given(password=_SECRETS)
def test_any_url_password_is_redacted(password: str) -> None:
    encoded = quote(password, safe="")
    for template in (
        "postgresql://app:{}@h1,h2:5433/jobs?sslmode=prefer",
        "postgresql://app@db/jobs?password={}&sslmode=prefer",
    ):
        # A password such as "postgres" may also spell part of the URL around it.
        assume(encoded not in template.format(REDACTED))
        text = template.format(encoded)
        check_conninfo(text)
        redacted = redact_conninfo(text)
        assert encoded not in redacted
        assert _libpq_reads(redacted) == _redacted_as_libpq_reads_it(text)


@given(password=_SECRETS)
def test_any_key_value_password_is_redacted(password: str) -> None:
    quoted = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"
    text = f"host=db password={quoted} dbname=jobs"
    check_conninfo(text)
    redacted = redact_conninfo(text)
    assert quoted not in redacted
    assert _libpq_reads(text)["password"] == password
    assert _libpq_reads(redacted) == _redacted_as_libpq_reads_it(text)
