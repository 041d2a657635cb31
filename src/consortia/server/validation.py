"""The job's update checks (``strategy/validation.py``) placed in front of the round's sink.

An update refused on its own (over the absolute norm bound, over the weight cap) raises
``UpdateRefused`` from ``add``, so the phase records it as refused, with its reason, like
any other bad reply. Under the relative bound updates are held until the phase is over:
``settle`` then refuses those over the multiple of the round's median norm, hands the
rest to the sink in request order, and returns the refusals for the round's record.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

from consortia.core.errors import ConsortiaError
from consortia.core.messages import Failure, FitRes
from consortia.strategy.validation import (
    UpdateRules,
    refusal,
    relative_refusals,
    update_norm,
    weight_cap,
)

log = logging.getLogger(__name__)


class UpdateRefused(ConsortiaError):
    """An update broke one of the job's validation rules; the message says which."""


class ValidatingSink:
    """Checks each fit reply, then passes it on to ``inner`` (a FitSink or a privacy round)."""

    def __init__(
        self,
        inner: Any,
        rules: UpdateRules,
        reference: float | None = None,
        cap_weights: bool = True,
    ) -> None:
        self.inner = inner
        self.rules = rules
        self._held: list[tuple[FitRes, float]] = []
        # Under DP the mean gives every update the same weight and the site's own count
        # feeds its privacy accounting: nothing to cap there.
        self._cap = weight_cap(rules, reference) if cap_weights else None
        self.claimed: list[int] = []  # the example counts the accepted updates claimed
        self.capped: dict[str, tuple[int, int]] = {}  # site -> (claimed, weight used)

    def add(self, res: FitRes) -> None:
        r = self.rules
        needs_norm = r.max_norm is not None or r.max_norm_multiple is not None
        norm = update_norm(res.delta) if needs_norm else math.nan
        reason = refusal(norm, res.num_examples, r)
        if reason is not None:
            raise UpdateRefused(reason)
        self.claimed.append(res.num_examples)
        if self._cap is not None and res.num_examples > self._cap[0]:
            weight = int(self._cap[0])
            log.info(
                "weight of %s capped from %d to %d examples: %s",
                res.site,
                res.num_examples,
                weight,
                self._cap[1],
            )
            self.capped[res.site] = (res.num_examples, weight)
            res = dataclasses.replace(res, num_examples=weight)
        if r.holds_updates:
            self._held.append((res, norm))
        else:
            self.inner.add(res)

    def settle(self) -> list[Failure]:
        """Decide the held updates against the round's median norm; the refused, as failures."""
        held, self._held = self._held, []
        refused: list[Failure] = []
        reasons = relative_refusals([n for _, n in held], self.rules)
        for (res, _), reason in zip(held, reasons, strict=True):
            if reason is None:
                try:
                    self.inner.add(res)
                    continue
                except ConsortiaError as exc:
                    reason = str(exc)
            refused.append(Failure(res.site, f"reply refused: {reason}"))
        return refused

    def result(self) -> Any:
        return self.inner.result()
