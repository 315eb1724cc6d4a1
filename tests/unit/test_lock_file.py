"""requirements.lock, which the image installs from, keeps up with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = Path(__file__).resolve().parents[2]
LOCK = PROJECT / "requirements.lock"
# The image's platform, which the lock is compiled for (see the lock's header).
IMAGE_MARKERS = {
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "python_version": "3.12",
    "python_full_version": "3.12.0",
}
PINNED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?P<options>.*)$")


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: tuple[str, ...]


def locked() -> dict[str, Pin]:
    """Each package in the lock: its pinned version and sha256 hashes."""
    logical = re.sub(r"\\\n", " ", LOCK.read_text())  # join continuation lines
    pins: dict[str, Pin] = {}
    for line in logical.splitlines():
        match = PINNED.match(line.strip())
        if match is None:
            continue
        hashes = tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", match["options"]))
        pins[canonicalize_name(match["name"])] = Pin(Version(match["version"]), hashes)
    return pins


def runtime_requirements() -> list[Requirement]:
    """[project] dependencies, and what their extras pull in (psycopg[binary] and so on)."""
    declared = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = [Requirement(text) for text in declared]
    for requirement in list(requirements):
        for extra in requirement.extras:
            for text in metadata.requires(requirement.name) or []:
                pulled = Requirement(text)
                if pulled.marker is not None and pulled.marker.evaluate(
                    {**IMAGE_MARKERS, "extra": extra}
                ):
                    requirements.append(pulled)
    return requirements


def test_every_runtime_dependency_is_pinned_with_a_hash_in_its_declared_range() -> None:
    pins = locked()
    requirements = runtime_requirements()
    assert len(requirements) > 4  # the extras were followed
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement.name} is not in {LOCK.name}: regenerate it"
        assert pin.hashes, f"{requirement.name} has no hash in {LOCK.name}"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"{LOCK.name} pins {requirement.name}=={pin.version}, outside {requirement}"
        )


def test_every_locked_package_has_a_hash() -> None:
    """pip --require-hashes refuses a lock with one package unhashed."""
    pins = locked()
    assert pins
    assert [name for name, pin in pins.items() if not pin.hashes] == []


def test_the_image_installs_from_the_lock_and_nothing_else() -> None:
    dockerfile = (PROJECT / "Dockerfile").read_text()
    assert "--require-hashes -r /tmp/requirements.lock" in dockerfile
    assert "--no-deps /wheels/" in dockerfile
    assert "pip wheel --no-cache-dir --no-deps" in dockerfile
