"""Extending consortia with public names only: an aggregator that needs every update, a
site app that loads its own data and keeps state for the whole job, a new two-phase
message exchange inserted into every round, and an event subscriber.

docs/extending.md walks through this file block by block (a test checks that every block
there is in here verbatim, and runs the job in simulation and over gRPC).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import SGDClassifier
from sklearn.preprocessing import StandardScaler

import consortia

SHARDS = 4


def make_model() -> consortia.LinearModel:
    est = SGDClassifier(loss="log_loss", alpha=1e-4, learning_rate="constant", eta0=0.01)
    return consortia.LinearModel(est, n_features=30, classes=np.array([0, 1]))


def _records() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(x), y


def load_data() -> consortia.Dataset:
    """The server's side: every fifth record is its test set (sites never train on it)."""
    x, y = _records()
    test = np.arange(len(y)) % 5 == 0
    return consortia.Dataset(x[~test], y[~test], x[test], y[test])


# -- 1. An aggregator that needs every update -------------------------------------------


def trim_extremes(updates, weights, sites, state):
    """Per coordinate, drop the highest and the lowest value and average the rest."""
    trim = 1 if len(updates) >= 3 else 0
    ordered = np.sort(updates, axis=0)
    return ordered[trim : len(updates) - trim].mean(axis=0)


consortia.register_aggregator(consortia.AllUpdatesAggregator("trim_extremes", trim_extremes))


# -- 2. A site app that loads its own data and keeps state ------------------------------


def _shard(site_id: str) -> int:
    """site-0001 -> 1, hospital-b -> 1: the last character picks this site's records."""
    last = site_id[-1]
    return (int(last) if last.isdigit() else ord(last) - ord("a")) % SHARDS


class HospitalSite(consortia.Site):
    """One object per site for the whole job: what it stores on self is there next round."""

    def __init__(self, site_id: str) -> None:
        x, y = _records()
        index = np.arange(len(y))
        mine = (index % 5 != 0) & (index % SHARDS == _shard(site_id))
        data = consortia.SiteData(x[mine], y[mine])
        super().__init__(site_id, consortia.SklearnTrainer(make_model), data)
        self.rounds_seen: list[int] = []
        self.secret: np.ndarray | None = None

    def on_fit(self, ins: consortia.FitIns) -> consortia.FitRes:
        self.rounds_seen.append(ins.round)
        reply = super().on_fit(ins)
        seen = float(len(self.rounds_seen))
        return replace(reply, metrics={**reply.metrics, "rounds_seen": seen})

    # The two handlers of the exchange below: the secret lives from one phase to the next.
    def on_commit(self, ins: CommitIns) -> CommitRes:
        self.secret = np.frombuffer(secrets.token_bytes(32), np.uint8)
        return CommitRes(self.site_id, ins.round, digest(self.secret))

    def on_prove(self, ins: ProveIns) -> ProveRes:
        if self.secret is None:
            raise RuntimeError("asked to prove a commitment this site never made")
        proof = digest(self.secret, ins.challenge)
        return ProveRes(self.site_id, ins.round, self.secret, proof)


# -- 3. A new two-phase exchange: commit, then prove ------------------------------------


@dataclass(frozen=True)
class CommitIns:
    round: int


@dataclass(frozen=True)
class CommitRes:
    site: str
    round: int
    commitment: np.ndarray  # SHA-256 of a secret only the site knows


@dataclass(frozen=True)
class ProveIns:
    round: int
    challenge: np.ndarray


@dataclass(frozen=True)
class ProveRes:
    site: str
    round: int
    secret: np.ndarray
    proof: np.ndarray  # SHA-256 of the secret and the challenge


def digest(*parts: np.ndarray) -> np.ndarray:
    h = hashlib.sha256(b"".join(p.tobytes() for p in parts)).digest()
    return np.frombuffer(h, np.uint8)


HASH = {"commitment": (32, np.dtype(np.uint8))}
consortia.register_kind("commit", CommitIns, CommitRes, reply_arrays=lambda ins: HASH)
consortia.register_kind(
    "prove",
    ProveIns,
    ProveRes,
    reply_arrays=lambda ins: {
        "secret": (32, np.dtype(np.uint8)),
        "proof": (32, np.dtype(np.uint8)),
    },
)


@dataclass
class CommitProveStep:
    """Every site commits to a fresh secret, then proves it still holds it."""

    name: str = "commit_prove"

    def run(self, ctx: consortia.RoundContext) -> None:
        commitments: dict[str, np.ndarray] = {}
        ctx.exchange(
            "commit",
            [(site, CommitIns(ctx.number)) for site in ctx.fleet.sites()],
            lambda site, res: commitments.__setitem__(site, res.commitment),
            min_replies=1,
        )
        challenge = np.frombuffer(secrets.token_bytes(16), np.uint8)
        proven: list[str] = []

        def accept(site: str, res: ProveRes) -> None:
            if not np.array_equal(digest(res.secret), commitments[site]) or not np.array_equal(
                res.proof, digest(res.secret, challenge)
            ):
                raise consortia.InvalidMessageError(f"{site}: proof does not match its commitment")
            proven.append(site)

        requests = [(site, ProveIns(ctx.number, challenge)) for site in commitments]
        ctx.exchange("prove", requests, accept, min_replies=1)
        ctx.metrics["proven_sites"] = float(len(proven))


def workflow(steps: list[consortia.Step]) -> list[consortia.Step]:
    """The job's rounds: the exchange first, then the standard fit and evaluation."""
    return [CommitProveStep(), *steps]


# -- 4. An event subscriber ----------------------------------------------------------------


class BestRound:
    """Remembers the round with the best central accuracy, as rounds become durable."""

    def __init__(self) -> None:
        self.round: int | None = None
        self.accuracy = -1.0

    def __call__(self, event: object) -> None:
        if isinstance(event, consortia.RoundDone):
            accuracy = event.record.metrics.get("accuracy", -1.0)
            if accuracy > self.accuracy:
                self.round, self.accuracy = event.record.round, accuracy
