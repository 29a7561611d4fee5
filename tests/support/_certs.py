# A self-signed RSA certificate for TLS tests, made with the openssl CLI (cryptography is not
# a dependency); a test that needs one skips with the reason when the CLI is missing.
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["self_signed_cert"]


def self_signed_cert(folder: Path, cn: str, *extra: str) -> tuple[Path, Path]:
    """(cert.pem, key.pem) in ``folder`` for subject CN ``cn``; ``extra`` openssl arguments
    (e.g. ``-addext``, ``subjectAltName=IP:127.0.0.1``)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed: cannot make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={cn}", *extra, "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
