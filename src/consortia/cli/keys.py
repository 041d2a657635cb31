"""``consortia keys``: make and manage the federation's certificates.

consortia keys init DIR [--host NAME ...]   federation CA + server certificate
consortia keys add-site DIR NAME           a site's key + certificate in DIR/sites/NAME
consortia keys revoke DIR NAME             put the site's certificates on the revocation list
consortia keys revoke DIR --serial HEX     revoke one certificate by its serial
consortia keys list DIR                    every certificate the CA issued, with its status
consortia keys new-signer NAME [--dir DIR]  a job signer key pair: NAME.key, NAME.pub
consortia keys sign-job JOB --key NAME.key  sign a job file: JOB.sig next to it
consortia keys policy-digest POLICY        the digest a site states of its policy file
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from consortia.security.pki import CRL_FILE, add_site, init_pki, issued, revoke_site


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
    if (args.name is None) == (args.serial is None):
        print("name a site or give --serial HEX (one of the two)", file=sys.stderr)
        return 2
    serial = None if args.serial is None else _hex(args.serial)
    serials = revoke_site(args.dir, name=args.name, serial=serial)
    who = f"site {args.name!r}" if args.name else "certificate"
    print(
        f"{who} revoked (serial {', '.join(f'{x:x}' for x in serials)}); copy "
        f"{CRL_FILE} to the server's PKI folder if it is not this one: a running server "
        "reads it and refuses the certificate from its next connection"
    )
    return 0


def _new_signer(args: argparse.Namespace) -> int:
    from consortia.security.signing import new_signer

    key, pub = new_signer(args.dir, args.name)
    print(f"job signer {args.name!r}: private key {key} (keep it secret), public key {pub}")
    line = pub.read_text().strip()
    print(f'sites that trust it add to their policy: accepted_job_signers = ["{line}"]')
    return 0


def _sign_job(args: argparse.Namespace) -> int:
    from consortia.security.signing import file_digest, sign_job

    out = sign_job(args.job, args.key)
    print(f"signed {args.job} (sha256 {file_digest(args.job)}): {out}")
    return 0


def _policy_digest(args: argparse.Namespace) -> int:
    """The digest a site with this policy file states when it joins a job, as the
    ledger's site_joined entry records it (``sha256sum``'s layout: digest, two spaces,
    file)."""
    from consortia.core.config import parse_model
    from consortia.core.policy_config import SitePolicyConfig, policy_digest

    print(f"{policy_digest(parse_model(SitePolicyConfig, args.policy))}  {args.policy}")
    return 0


def _hex(text: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise SystemExit(f"--serial: {text!r} is not a hexadecimal serial") from None


def _list(args: argparse.Namespace) -> int:
    for e in issued(args.dir):
        extra = f" revoked {e['revoked_at']}" if e.get("revoked_at") else ""
        row = f"{e['serial']}  {e['kind']:<6} {e['name']:<24} until {e['not_after']}"
        print(f"{row}  {e['status']}{extra}")
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

    rev = sub.add_parser("revoke", help="revoke a site's certificates, or one by serial")
    rev.add_argument("dir", help="the CA's PKI folder (made by `keys init`)")
    rev.add_argument("name", nargs="?", help="site whose certificates to revoke")
    rev.add_argument("--serial", help="revoke the certificate with this (hex) serial")
    rev.set_defaults(func=_revoke)
    ls = sub.add_parser("list", help="every certificate the CA issued, with its status")
    ls.add_argument("dir", help="the CA's PKI folder")
    ls.set_defaults(func=_list)

    ns = sub.add_parser("new-signer", help="make a job signer key pair (Ed25519)")
    ns.add_argument("name", help="the signer's name: NAME.key and NAME.pub are written")
    ns.add_argument("--dir", type=Path, default=Path("."), help="folder to write them to")
    ns.set_defaults(func=_new_signer)
    sj = sub.add_parser("sign-job", help="sign a job file with a job signer key")
    sj.add_argument("job", type=Path, help="the job file; JOB.sig is written next to it")
    sj.add_argument("--key", type=Path, required=True, help="the signer's NAME.key")
    sj.set_defaults(func=_sign_job)
    pd = sub.add_parser(
        "policy-digest",
        help="the SHA-256 a site states of its policy file when it joins (the ledger's "
        "site_joined policy_sha256)",
    )
    pd.add_argument("policy", type=Path, help="the site's policy file (TOML, as --policy)")
    pd.set_defaults(func=_policy_digest)
