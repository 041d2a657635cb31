"""``consortia client``: serve this site's data to a federation's server, over mutual TLS.

consortia client --server HOST:PORT --site NAME --pki SITE_DIR --app FILE_OR_MODULE:FUNCTION

``FUNCTION(site_name)`` returns the site's app: a ``consortia.Site`` (a trainer and local
data) or any ``consortia.SiteApp``; nothing else of the site leaves this machine. The
client dials out (no inbound port), reconnects on its own with backoff, and exits with
status 0 when the server says the job is over (``--keep-alive``: it stays for the next
job), on Ctrl-C or on SIGTERM; with status 4 when its policy (``--policy``) refuses the
job the server declares.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from consortia.core.errors import ConfigError

# `consortia client` exits with this when the site's policy refused the server's job.
REFUSED_EXIT_STATUS = 4


def load_site(ref: str, site_name: str) -> Any:
    """Import ``FILE.py:FUNCTION`` (relative to the working directory) or
    ``package.module:FUNCTION`` and call it with the site's name."""
    from consortia.client.app import SiteApp
    from consortia.task import load_app

    module_ref, sep, fn_name = ref.rpartition(":")
    if not sep or not module_ref or not fn_name:
        raise ConfigError(f"--app {ref!r}: expected FILE.py:FUNCTION or module:FUNCTION")
    module = load_app(module_ref, Path.cwd())
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"--app {ref!r}: {module_ref} has no function {fn_name!r}")
    site = fn(site_name)
    if not isinstance(site, SiteApp):
        raise ConfigError(
            f"--app {ref!r}: {fn_name}({site_name!r}) returned {type(site).__name__}, "
            "not a consortia SiteApp (e.g. consortia.Site)"
        )
    if site.site_id != site_name:
        raise ConfigError(
            f"--app {ref!r}: the Site is named {site.site_id!r} but this is site {site_name!r}"
        )
    return site


def check_identity(site_dir: Path, site_name: str) -> None:
    """The certificate in ``site_dir`` must be this site's, issued by the CA next to it:
    caught here with a clear message rather than as a refused TLS handshake later."""
    import datetime as dt

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from consortia.security.pki import PkiError, site_paths

    paths = site_paths(site_dir)
    try:
        cert = x509.load_pem_x509_certificate(paths.cert.read_bytes())
        ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    except FileNotFoundError as exc:
        raise PkiError(
            f"--pki {site_dir}: missing {Path(exc.filename).name}; pass the folder that "
            "`consortia keys add-site` made for this site (site.pem, site.key, ca.pem)"
        ) from exc
    except ValueError as exc:
        raise PkiError(f"--pki {site_dir}: unreadable certificate ({exc})") from exc
    if not paths.key.is_file():
        raise PkiError(f"--pki {site_dir}: missing the site's key {paths.key.name}")
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PkiError(
            f"the certificate in {site_dir} is valid from {cert.not_valid_before_utc:%Y-%m-%d} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d}, not now; ask the federation's operator "
            "for a new one (`consortia keys add-site NAME --replace`)"
        )
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    if cn != site_name:
        raise PkiError(
            f"--site {site_name!r} but the certificate in {site_dir} is for {cn!r}: "
            "a site's name is the common name of its certificate"
        )
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PkiError(
            f"the certificate in {site_dir} was not issued by the CA in {paths.ca_cert}: the "
            "folder mixes two federations' files; use the folder `consortia keys add-site` "
            "made for this site, as it is"
        ) from exc


def load_policy(path: Path) -> Any:
    """A site policy file: the same keys as a job's [simulation.site_policy]."""
    from consortia.client.policy import SitePolicy
    from consortia.core.config import parse_model
    from consortia.core.policy_config import SitePolicyConfig

    return SitePolicy.from_config(parse_model(SitePolicyConfig, path))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="serve this site to a federation's server")
    p.add_argument("--server", required=True, help="server address HOST:PORT")
    p.add_argument("--site", required=True, help="this site's name (its certificate's CN)")
    p.add_argument("--pki", type=Path, help="this site's folder from `consortia keys add-site`")
    p.add_argument(
        "--app", required=True, help="FILE.py:FUNCTION or module:FUNCTION returning the Site"
    )
    p.add_argument(
        "--policy",
        type=Path,
        help="this site's policy (TOML: accepted job digests or signers, allowed "
        "strategies and aggregators, max_epsilon, min_sites_per_round, data-use agreement, "
        "...; see docs/deployment.md): jobs and rounds that break it are refused, whatever "
        "the server says",
    )
    p.add_argument(
        "--receipts",
        type=Path,
        help="file of the server's signed receipts for this site's updates "
        "(default: receipts.jsonl in the --pki folder); check a run with "
        "`consortia audit verify --site FILE RUN_DIR`",
    )
    p.add_argument("--insecure", action="store_true", help="no TLS (local experiments only)")
    p.add_argument("--server-name", help="name to check the server's certificate against")
    p.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat interval (s)")
    p.add_argument("--max-backoff", type=float, default=30.0, help="longest reconnect wait (s)")
    p.add_argument(
        "--max-attempts",
        type=int,
        help="give up after this many failed connection attempts in a row (default: never)",
    )
    p.add_argument(
        "--verbose", "-v", action="store_true", help="log everything (and gRPC's own lines)"
    )
    p.add_argument(
        "--keep-alive",
        action="store_true",
        help="stay connected when a job ends, for the server's next job (default: exit 0)",
    )
    p.set_defaults(func=run)


def refuse_seeded_noise(site: object, name: str) -> None:
    """A deployed site's DP noise comes from its CSPRNG, always: a seeded site (simulation's
    reproducible runs) is refused, whatever the job file or the server says."""
    if getattr(site, "noise_seed", None) is not None:
        raise ConfigError(
            f"site {name}: its app sets noise_seed, which makes its differential-privacy "
            "noise reproducible by anyone who learns the seed; that is for simulation only, "
            "and `consortia client` refuses to start with it"
        )


def run(args: argparse.Namespace) -> int:
    from consortia.cli.output import setup_output

    console = setup_output(args.verbose)  # before gRPC loads
    from consortia.core.memory import keep_freed_memory

    keep_freed_memory()  # models travel in MiB-sized messages: reuse their buffers

    # Connection state and round progress come from the connector's log at INFO.
    logging.getLogger("consortia.client").setLevel(logging.INFO)
    if not args.insecure:
        if args.pki is None:
            raise ConfigError("--pki SITE_DIR is required (TLS always); --insecure for tests")
        check_identity(args.pki, args.site)
    site = load_site(args.app, args.site)
    refuse_seeded_noise(site, args.site)
    data = getattr(site, "data", None)
    if data is not None and data.num_train == 0:
        raise ConfigError(
            f"site {args.site}: its app loaded no training examples (check the data path or "
            "query in the --app function); a site with nothing to train on does not join"
        )
    if args.policy is not None:
        from consortia.client.runtime import policy_check

        site.policy = load_policy(args.policy)
        if policy_check not in site.middleware:  # a custom app is held to the policy too
            site.middleware.insert(0, policy_check)
        console.print(
            f"site policy from {args.policy} (sha256 {site.policy.digest()}, stated to the "
            f"server when this site joins): {site.policy}",
            markup=False,
        )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        console.print(f"{signal.Signals(signum).name}: disconnecting")
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    console.print(f"[bold]site {args.site}[/]: serving {args.app} to {args.server}")
    from consortia.fleet.grpc.client import SiteRefusedJob

    try:
        ended = _serve(args, site, stop)
    except SiteRefusedJob as exc:
        console.print(f"site {args.site} refused the job and left: {exc}", markup=False)
        return REFUSED_EXIT_STATUS
    if ended is not None:
        console.print(
            f"job {ended.job_id} is over ({ended.status}); site {args.site} exits", markup=False
        )
    else:
        console.print(f"site {args.site} stopped", markup=False)
    return 0


def _serve(args: argparse.Namespace, site: Any, stop: threading.Event) -> Any:
    from consortia.fleet.grpc import run_site

    return run_site(
        args.server,
        site,
        None if args.insecure else args.pki,
        insecure=args.insecure,
        stop=stop,
        heartbeat_s=args.heartbeat,
        max_backoff_s=args.max_backoff,
        max_attempts=args.max_attempts,
        server_name=args.server_name,
        keep_alive=args.keep_alive,
        receipts=args.receipts,
    )
