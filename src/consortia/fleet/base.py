"""The Fleet interface: send one message to each of some sites, get replies or failures.

The round protocol only ever talks to this interface, so in-process simulation, a
process pool, Ray and gRPC deployment are interchangeable under the same round loop.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from consortia.core.manifest import is_policy_refusal
from consortia.core.messages import Failure, InvalidMessageError, Outcome, Reply

if TYPE_CHECKING:
    from consortia.core.join import JoinStatement
    from consortia.core.manifest import JobManifest

log = logging.getLogger(__name__)

__all__ = ["Failure", "Fleet", "Outcome", "Reply", "SiteHandler", "Timing"]


class SiteHandler(Protocol):
    """What a fleet needs of a site app: its id and one entry point for every message."""

    site_id: str

    def handle(self, message: Any) -> Any: ...


MakeSite = Callable[[str], SiteHandler]


@dataclass(frozen=True)
class Timing:
    """When a phase ends: every request answered; or ``min_replies`` replies in and then
    ``grace_s`` more seconds; or ``deadline_s`` after the requests went out."""

    deadline_s: float
    min_replies: int = 0
    grace_s: float | None = None

    def grace_over(self, replies: int, met_at: float | None, now: float) -> bool:
        return (
            self.grace_s is not None
            and self.min_replies > 0
            and replies >= self.min_replies
            and met_at is not None
            and now - met_at >= self.grace_s
        )


def grace_failure(site: str, timing: Timing) -> Failure:
    return Failure(
        site,
        f"no reply within the {timing.grace_s:g} s grace period after the phase's minimum "
        f"of {timing.min_replies} replies arrived",
    )


class Fleet(ABC):
    """A set of reachable sites."""

    # What each site stated of its policy when it joined (set by ``admit``).
    _join_statements: Mapping[str, JoinStatement] = MappingProxyType({})

    @abstractmethod
    def sites(self) -> list[str]:
        """Ids of the sites that can be asked now, sorted."""

    @abstractmethod
    def send(self, requests: Sequence[tuple[str, Any]], timing: Timing) -> Iterator[Outcome]:
        """Deliver each (site, message); yield one outcome per request, in request order.

        A site that raises, disconnects or has not answered when the phase ends (see
        ``Timing``) yields a ``Failure``; it never stops the other sites. Yielding in
        request order (not arrival order) keeps aggregation, and so the final model,
        reproducible.
        """

    def share(self, weights: np.ndarray) -> np.ndarray:
        """The global model as this fleet's sites can read it without a copy of their own.

        The run driver calls this before each round and keeps the returned array (equal
        values, read-only where it differs) as the model, so that a fleet whose sites live
        in other processes of this machine holds one copy of a large model for the server
        and every site together. The default is the model itself.
        """
        return weights

    def worker_peaks(self) -> list[int]:
        """Peak resident bytes of each process this fleet runs sites in, besides the
        server's own (none for fleets that have no such processes)."""
        return []

    def admit(self, manifest: JobManifest, deadline_s: float) -> dict[str, str]:
        """Put the job's manifest to every site before the first round; return {site:
        reason} for each site whose own policy refuses to join. The run driver never asks
        those sites again. A site that fails to answer for another reason stays: its
        rounds will fail or succeed on their own. Each joining site's statement of its
        policy is kept for ``join_statement``; one that does not check out is dropped
        with a logged reason (the site still joins, stating nothing). A fleet whose sites
        hear the manifest as they connect (gRPC: in the Welcome) overrides this."""
        from consortia.core.join import JoinIns, JoinRes, join_statement

        message = JoinIns(0, manifest.to_json())
        requests = [(site, message) for site in self.sites()]
        refused: dict[str, str] = {}
        statements: dict[str, JoinStatement] = {}
        for o in self.send(requests, Timing(deadline_s)):
            if isinstance(o, Failure):
                if is_policy_refusal(o.reason):
                    refused[o.site] = o.reason
                continue
            if not isinstance(o.message, JoinRes):
                continue
            try:
                statement = join_statement(o.message)
            except InvalidMessageError as exc:
                log.warning("site %s: its policy statement is dropped: %s", o.site, exc)
                continue
            if statement is not None:
                statements[o.site] = statement
        self._join_statements = statements
        return refused

    def join_statement(self, site: str) -> JoinStatement | None:
        """What ``site`` stated of its policy when it joined, checked (None: nothing)."""
        return self._join_statements.get(site)

    def join_refusals(self) -> dict[str, str]:
        """Sites that refused to join outside ``admit`` (over gRPC: at their welcome)."""
        return {}

    def end_job(self, status: str) -> None:  # noqa: B027 - optional hook
        """Tell the sites that the job is over (a deployment's clients then exit)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers or connections."""

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
