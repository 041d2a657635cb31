"""gRPC TLS credentials from a PKI folder (see ``consortia.security.pki`` for the layout)."""

from __future__ import annotations

from pathlib import Path

import grpc

from consortia.security.pki import CA_CERT, SERVER_CERT, SERVER_KEY, PkiError, site_paths


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise PkiError(f"missing {path}: is this the right PKI folder?") from exc


def server_credentials(pki_dir: Path) -> grpc.ServerCredentials:
    """Mutual TLS: the server's certificate, and client certificates REQUIRED from the CA."""
    return grpc.ssl_server_credentials(
        [(_read(pki_dir / SERVER_KEY), _read(pki_dir / SERVER_CERT))],
        root_certificates=_read(pki_dir / CA_CERT),
        require_client_auth=True,
    )


def site_credentials(site_dir: Path) -> grpc.ChannelCredentials:
    """A site's key and certificate, and the CA it trusts the server by (its folder only)."""
    paths = site_paths(site_dir)
    return grpc.ssl_channel_credentials(
        root_certificates=_read(paths.ca_cert),
        private_key=_read(paths.key),
        certificate_chain=_read(paths.cert),
    )
