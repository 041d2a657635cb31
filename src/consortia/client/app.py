"""Site apps: one handler per message kind, and state that lives for the whole job.

A site is an object. The fleet creates it once and keeps it where the site lives (in the
calling process for the debug fleet, in one pinned worker of the pool, in the
``consortia client`` process in a deployment), so anything a handler stores on ``self``
is there in the next phase and the next round: secure aggregation's keys, a personalised
head, error-feedback residuals.

A message of kind ``K`` goes to the method ``on_K``. Middleware wraps every handler with
one signature, ``middleware(app, message, call_next) -> reply``; it is how site-side
stages attach (a policy check before training, clipping and noise after it, masking,
signing) without the handlers knowing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from consortia.core.join import JoinIns, JoinRes
from consortia.core.manifest import JobManifest, parse_manifest
from consortia.core.messages import InvalidMessageError, kind_of

Handler = Callable[[Any], Any]
Middleware = Callable[["SiteApp", Any, Handler], Any]


class SiteApp:
    """Base of every site: subclass it and define ``on_<kind>`` handlers."""

    def __init__(self, site_id: str, middleware: Sequence[Middleware] = ()) -> None:
        self.site_id = site_id
        self.middleware: list[Middleware] = list(middleware)
        # The job this site joined, as the server declared it (see ``on_join``).
        self.manifest: JobManifest | None = None

    def handler(self, kind: str) -> Handler:
        fn = getattr(self, f"on_{kind}", None)
        if not callable(fn):
            raise InvalidMessageError(f"site {self.site_id} has no handler for {kind!r} messages")
        return fn

    def on_join(self, ins: JoinIns) -> JoinRes:
        """Keep the job's manifest: the site's policy (middleware, before this handler)
        has accepted it, and checks each round against it."""
        self.manifest = parse_manifest(ins.manifest) if ins.manifest else None
        return JoinRes(self.site_id, 0)

    def handle(self, message: Any) -> Any:
        """Run ``message`` through the middleware chain (first = outermost) to its handler."""
        kind = kind_of(message).name
        try:
            call = self.handler(kind)
        except InvalidMessageError as exc:
            # A middleware stage may answer a kind no handler knows (the ledger's receipts);
            # otherwise the message ends here, with this error.
            error = exc

            def call(message: Any) -> Any:
                raise error

        for mw in reversed(self.middleware):
            call = _bind(mw, self, call)
        return call(message)


def _bind(mw: Middleware, app: SiteApp, nxt: Handler) -> Handler:
    def call(message: Any) -> Any:
        return mw(app, message, nxt)

    return call
