"""Certificates made at test time with the openssl CLI: a CA, a server and a client."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=jobpub test CA", "-keyout", str(ca_key), "-out", str(ca))  # fmt: skip
    made = {}
    for name, extension in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        key, csr, cert = (directory / f"{name}.{suffix}" for suffix in ("key", "csr", "pem"))
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=jobpub-{name}",
                 "-keyout", str(key), "-out", str(csr))  # fmt: skip
        extfile = directory / f"{name}.ext"
        extfile.write_text(extension + "\n")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(extfile), "-out", str(cert),
        )  # fmt: skip
        made[name] = (cert, key)
    for path in directory.iterdir():
        path.chmod(0o644)  # mosquitto reads them as its own user
    return Certificates(ca, *made["server"], *made["client"])
