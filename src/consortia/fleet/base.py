"""The Fleet interface: send one message to each of some sites, get replies or failures.

The round protocol only ever talks to this interface, so in-process simulation, a
process pool, Ray and gRPC deployment are interchangeable under the same round loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    site: str
    message: Any


@dataclass(frozen=True)
class Failure:
    site: str
    reason: str


Outcome = Reply | Failure


class Fleet(ABC):
    """A set of reachable sites."""

    @abstractmethod
    def sites(self) -> list[str]:
        """Ids of the sites that can be asked now, sorted."""

    @abstractmethod
    def send(self, requests: Sequence[tuple[str, Any]], deadline_s: float) -> Iterator[Outcome]:
        """Deliver each (site, message); yield one outcome per request, in request order.

        A site that raises, disconnects or has not answered ``deadline_s`` seconds after
        the call yields a ``Failure``; it never stops the other sites. Yielding in request
        order (not arrival order) keeps aggregation, and so the final model, reproducible.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers or connections."""

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
