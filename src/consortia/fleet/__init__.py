"""Fleets: the one seam between the round protocol and how messages reach sites."""

from consortia.fleet.base import Failure, Fleet, Outcome, Reply

__all__ = ["Failure", "Fleet", "Outcome", "Reply"]
