"""libpq connection strings: checked without connecting, shown without their secrets.

libpq reads two forms (PostgreSQL manual, "Connection Strings"): a URL,
`postgresql://[user[:password]@][host][:port][,host[:port]...][/dbname][?key=value&...]`,
and `key=value` pairs separated by white space, a value optionally single-quoted, with
backslash escapes. The driver is not imported here (settings stay free of it);
tests/unit/test_conninfo.py holds both functions to libpq's own parser.
"""

from __future__ import annotations

import re
from typing import Final

URL_SCHEMES: Final = ("postgresql://", "postgres://")
REDACTED: Final = "***"
# Keys whose value is a secret: the login password and the client key's passphrase.
SECRET_KEYS: Final = frozenset({"password", "sslpassword"})

_ANY_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_KEYWORD = re.compile(r"[a-z_]+")  # every libpq keyword is lower case with underscores
_PERCENT_ENCODED = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*", re.DOTALL)
_PORT = re.compile(r"[0-9]{1,5}")
# Every `?key=value` or `&key=value` in a URL, overlapping, so that a value holding a
# `?` cannot hide the parameter after it from redaction.
_URL_PARAMETER = re.compile(r"(?=[?&]([^=&?]*)=([^&]*))")


class ConninfoError(ValueError):
    """A connection string libpq would refuse. The message quotes none of the string."""


def check_conninfo(text: str) -> None:
    """Raise ConninfoError unless libpq can parse `text`.

    Option names are checked for shape only: libpq refuses unknown ones when it
    connects, and which ones it knows depends on its version.
    """
    if not text.strip():
        raise ConninfoError("is empty")
    if text.startswith(URL_SCHEMES):
        _check_url(text)
    elif _ANY_SCHEME.match(text):
        raise ConninfoError(
            "must start with postgresql:// or postgres://, or be libpq key=value pairs"
        )
    else:
        for keyword, _value, _span in _keyword_values(text):
            if not _KEYWORD.fullmatch(keyword):
                raise ConninfoError("has a key that is not a libpq option name")


def redact_conninfo(text: str) -> str:
    """`text` with every password replaced by ***, for logs."""
    if text.startswith(URL_SCHEMES):
        return _redact_url(text)
    try:
        pairs = _keyword_values(text)
    except ConninfoError:
        return REDACTED  # not parseable, so nothing tells where a secret ends
    return _replace(text, [span for key, value, span in pairs if _is_secret(key, value)])


def _is_secret(key: str, value: str) -> bool:
    # libpq can expand a dbname that is itself a connection string, password and all.
    nested = key == "dbname" and ("=" in value or value.startswith(URL_SCHEMES))
    return key in SECRET_KEYS or nested


def _check_url(text: str) -> None:
    rest = text.split("://", 1)[1]
    # As libpq reads it: user name and password end at the first @ before the first /.
    slash = _find(rest, "/")
    at = rest.find("@", 0, slash)
    if at >= 0:
        _check_decodes(rest[:at], "user name or password")
        rest = rest[at + 1 :]
    hosts = re.match(r"[^/?]*", rest)
    assert hosts is not None  # noqa: S101 - the pattern matches the empty string
    _check_hosts(hosts.group())
    rest = rest[hosts.end() :]
    path, _, query = rest.partition("?")
    _check_decodes(path.removeprefix("/"), "database name")
    if not query:
        return
    for parameter in query.split("&"):
        key, equals, value = parameter.partition("=")
        if not equals or "=" in value:
            raise ConninfoError("has a query parameter that is not key=value")
        _check_decodes(value, "query value")
        if not _KEYWORD.fullmatch(_decode(key)):
            raise ConninfoError("has a query parameter that is not a libpq option name")


def _check_hosts(hostspec: str) -> None:
    """`host[:port]` entries separated by commas; a host may be `[IPv6]`."""
    entries = hostspec.split(",") if hostspec else []
    for entry in entries:
        if entry.startswith("["):
            address, bracket, tail = entry[1:].partition("]")
            if not bracket or not address:
                raise ConninfoError("has an IPv6 host without its closing ]")
            if tail and not tail.startswith(":"):
                raise ConninfoError("has text after an IPv6 host's ]")
            colon, port = bool(tail), tail[1:]
        else:
            host, colon_text, port = entry.partition(":")
            colon = bool(colon_text)
            if not host and len(entries) > 1:
                raise ConninfoError("has an empty host in its host list")
            _check_decodes(host, "host")
        if colon and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
            raise ConninfoError("has an invalid port")


def _check_decodes(text: str, part: str) -> None:
    # libpq refuses a % not followed by two hex digits, and %00.
    if not _PERCENT_ENCODED.fullmatch(text) or "%00" in text:
        raise ConninfoError(f"has a bad percent-encoding in its {part}")


def _decode(text: str) -> str:
    return re.sub(r"%([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def _keyword_values(text: str) -> list[tuple[str, str, tuple[int, int]]]:
    """(keyword, value, where the value is written, quotes included), as libpq reads them."""
    pairs: list[tuple[str, str, tuple[int, int]]] = []
    i = 0
    while True:
        i = _skip_space(text, i)
        if i == len(text):
            return pairs
        start = i
        while i < len(text) and not text[i].isspace() and text[i] != "=":
            i += 1
        keyword = text[start:i]
        i = _skip_space(text, i)
        if i == len(text) or text[i] != "=":
            raise ConninfoError(f'has a key without "=" (pair {len(pairs) + 1})')
        value_start = _skip_space(text, i + 1)
        value, i = _read_value(text, value_start)
        pairs.append((keyword, value, (value_start, i)))


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _read_value(text: str, i: int) -> tuple[str, int]:
    """The value starting at `i`, unescaped, and where it ends. A backslash escapes the
    next character; unquoted, white space ends the value."""
    quoted = i < len(text) and text[i] == "'"
    if quoted:
        i += 1
    value: list[str] = []
    while i < len(text):
        char = text[i]
        if quoted and char == "'":
            return "".join(value), i + 1
        if not quoted and char.isspace():
            break
        if char == "\\":
            i += 1
            if i == len(text):
                break
            char = text[i]
        value.append(char)
        i += 1
    if quoted:
        raise ConninfoError("has a quoted value without its closing quote")
    return "".join(value), i


def _redact_url(text: str) -> str:
    head = text.index("://") + 3
    rest = text[head:]
    secrets = []
    # libpq ends the password at the first @ before the first /; Python's urlsplit at
    # the last @ before the first / or ?. Redact up to the last @ either could mean.
    at = rest.rfind("@", 0, max(_find(rest, "/"), _find(rest, "?")))
    colon = rest.find(":", 0, max(at, 0))
    if at >= 0 and colon >= 0:
        secrets.append((head + colon + 1, head + at))
    for parameter in _URL_PARAMETER.finditer(text, head):
        key, value = parameter.group(1), parameter.group(2)
        if _is_secret(_decode(key), _decode(value)):
            secrets.append((parameter.start(2), parameter.end(2)))
    return _replace(text, secrets)


def _find(text: str, char: str) -> int:
    """Where `char` first occurs, or the end of `text`."""
    where = text.find(char)
    return len(text) if where < 0 else where


def _replace(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` with each span (merged where they overlap) replaced by REDACTED."""
    pieces, done = [], 0
    for start, end in sorted(spans):
        if start < done:  # overlaps the secret before: one ***
            done = max(done, end)
            continue
        pieces += [text[done:start], REDACTED]
        done = end
    pieces.append(text[done:])
    return "".join(pieces)
