"""Security material of a federation: the PKI (CA, server and site certificates, revocation)."""

from consortia.security.pki import (
    PkiError,
    RevocationWatcher,
    SitePaths,
    add_site,
    check_site_name,
    init_pki,
    load_crl,
    revoke_site,
    site_paths,
)

__all__ = [
    "PkiError",
    "RevocationWatcher",
    "SitePaths",
    "add_site",
    "check_site_name",
    "init_pki",
    "load_crl",
    "revoke_site",
    "site_paths",
]
