"""Fixtures for TURN and TLS tests: a real coturn (`turnserver`) on 127.0.0.1 with coturn's REST
secret scheme, and a certificate authority plus a hub certificate for 127.0.0.1/localhost made
for the test with the `cryptography` package."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streamer.hub.turn import turn_credentials
from streamer.net.iceservers import probe_turn
from tests.waiting import eventually


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 just now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


@dataclass
class Coturn:
    url: str  # turn:127.0.0.1:PORT
    secret: bytes
    log: Path

    def credentials(self, ttl: int = 600, now: float | None = None) -> tuple[str, str]:
        import time

        return turn_credentials(self.secret, ttl, time.time() if now is None else now)


@pytest.fixture
async def coturn(tmp_path: Path) -> AsyncIterator[Coturn]:
    """Debian's coturn on 127.0.0.1 with use-auth-secret, relaying to loopback peers."""
    secret = secrets.token_hex(32).encode()
    port = free_port()
    log = tmp_path / "turnserver.log"
    proc = await asyncio.create_subprocess_exec(
        "turnserver", "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
        f"--listening-port={port}", f"--alt-listening-port={free_port()}",
        "--use-auth-secret", f"--static-auth-secret={secret.decode()}", "--realm=swarmcast.test",
        "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers", "--fingerprint", "--verbose",
        f"--userdb={tmp_path / 'turndb'}", f"--pidfile={tmp_path / 'turnserver.pid'}",
        f"--log-file={log}", "--simple-log", "--no-stdout-log",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    server = Coturn(f"turn:127.0.0.1:{port}", secret, log)
    try:
        async def allocates() -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"turnserver exited with {proc.returncode}")
            user, password = server.credentials()
            return await probe_turn(server.url, user, password, timeout=1.0) is None

        await eventually(allocates, "coturn to allocate", timeout=20.0)
        yield server
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


@dataclass
class Certificates:
    ca: Path  # the CA's certificate (PEM): what clients trust
    cert: Path  # the hub's certificate for 127.0.0.1, localhost and 198.18.0.1, signed by the CA
    key: Path  # its private key
    other_key: Path  # a key that belongs to no certificate


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    path.chmod(0o600)


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A private CA and a hub certificate it signed, valid now for a day."""
    directory = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "swarmcast test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False,
        ), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            # The NAT lab's public machine (tests/netlab.py PUBLIC_IP), for its https hub.
            x509.IPAddress(ipaddress.ip_address("198.18.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certificates(
        directory / "ca.pem", directory / "hub.pem", directory / "hub.key",
        directory / "other.key",
    )
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths.key, key)
    _write_key(paths.other_key, ec.generate_private_key(ec.SECP256R1()))
    return paths
