"""``consortia keys``: make and manage the federation's certificates.

consortia keys init DIR [--host NAME ...]   federation CA + server certificate
consortia keys add-site DIR NAME           a site's key + certificate in DIR/sites/NAME
consortia keys revoke DIR NAME             put the site's certificate on the revocation list
"""

from __future__ import annotations

import argparse
from typing import Any

from consortia.security.pki import CRL_FILE, add_site, init_pki, revoke_site


def _init(args: argparse.Namespace) -> int:
    d = init_pki(args.dir, hosts=args.host, valid_days=args.days)
    print(f"federation CA and server certificate written to {d}")
    print(f"keep {d / 'ca.key'} secret (offline in production): it signs every site")
    return 0


def _add_site(args: argparse.Namespace) -> int:
    paths = add_site(args.dir, args.name, valid_days=args.days, replace=args.replace)
    print(f"site {args.name!r} enrolled: hand the folder {paths.directory} to that site only")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    serial = revoke_site(args.dir, args.name)
    print(
        f"site {args.name!r} revoked (certificate serial {serial:x}); "
        f"a running server reads {CRL_FILE} and disconnects and refuses it"
    )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("keys", help="create and manage the federation's certificates")
    sub = p.add_subparsers(dest="keys_command", required=True)

    init = sub.add_parser("init", help="create the federation CA and the server certificate")
    init.add_argument("dir", help="PKI folder to create")
    init.add_argument(
        "--host",
        action="append",
        default=[],
        help="extra DNS name or IP address the server is reached at (repeatable)",
    )
    init.add_argument("--days", type=int, default=825, help="certificate validity in days")
    init.set_defaults(func=_init)

    add = sub.add_parser("add-site", help="enrol a site: key + certificate signed by the CA")
    add.add_argument("dir", help="PKI folder made by `keys init`")
    add.add_argument("name", help="site name; becomes its identity on the server")
    add.add_argument("--days", type=int, default=825, help="certificate validity in days")
    add.add_argument(
        "--replace",
        action="store_true",
        help="revoke the site's current certificate and issue a new one",
    )
    add.set_defaults(func=_add_site)

    rev = sub.add_parser("revoke", help="revoke a site's certificate")
    rev.add_argument("dir", help="PKI folder made by `keys init`")
    rev.add_argument("name", help="site to revoke")
    rev.set_defaults(func=_revoke)
