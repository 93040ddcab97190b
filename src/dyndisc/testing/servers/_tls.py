"""Throwaway TLS material for test servers: a self-signed CA, a loopback server cert and a client cert."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TLSFiles", "generate_tls"]


@dataclass(frozen=True)
class TLSFiles:
    """Paths and PEM text of a generated CA, server certificate and client certificate.

    ``cert_path``/``key_path`` (and ``cert_pem``/``key_pem``) are the *client* pair, which is what a client
    of the server needs together with ``ca_path``.
    """

    ca_path: Path
    cert_path: Path
    key_path: Path
    server_cert_path: Path
    server_key_path: Path
    ca_pem: str
    cert_pem: str
    key_pem: str

    def client_ssl_context(self, *, with_client_cert: bool = True) -> ssl.SSLContext:
        """An SSL context trusting the CA and, by default, presenting the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        if with_client_cert:
            context.load_cert_chain(str(self.cert_path), str(self.key_path))
        return context


def generate_tls(directory: Path, *, server_names: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TLSFiles:
    """Generate a CA, a server cert for ``server_names`` and a client cert, written under ``directory``.

    Needs the ``trustme`` package (in the ``test`` extra).
    """
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - depends on the environment
        from dyndisc.testing.servers._process import ServerUnavailable

        raise ServerUnavailable("TLS test servers need 'trustme': pip install 'dyndisc[test]'") from exc

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="dyndisc test CA")
    server = ca.issue_cert(*server_names)
    # No common name on the client cert: etcd would otherwise treat the CN as an authenticated user name.
    client = ca.issue_cert("dyndisc-test-client")
    paths = {
        "ca": directory / "ca.pem",
        "server_cert": directory / "server.pem",
        "server_key": directory / "server-key.pem",
        "cert": directory / "client.pem",
        "key": directory / "client-key.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    # Chain without the CA itself: the leaf is what servers must present.
    paths["server_cert"].write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    paths["cert"].write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(paths["key"]))
    for key_file in (paths["server_key"], paths["key"]):
        key_file.chmod(0o600)
    return TLSFiles(
        ca_path=paths["ca"],
        cert_path=paths["cert"],
        key_path=paths["key"],
        server_cert_path=paths["server_cert"],
        server_key_path=paths["server_key"],
        ca_pem=ca.cert_pem.bytes().decode(),
        cert_pem=paths["cert"].read_text(),
        key_pem=paths["key"].read_text(),
    )
