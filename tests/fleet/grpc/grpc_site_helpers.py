"""Helpers for gRPC fleet tests: a toy trainer, a site factory and a custom message kind
(imported by name, so the module name is unique across the test tree)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consortia.client.app import SiteApp
from consortia.client.runtime import Site, SiteData
from consortia.core.messages import TrainSettings, decode, encode, register_kind
from consortia.core.spec import ModelSpec
from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb

SITES = ("site-a", "site-b", "site-c")


class AddTrainer:
    """Local training that adds ``step`` to every weight; remembers what it was sent.

    With ``sleep_s`` each fit waits that long, or until ``wake`` is set (tests set it at
    the end, so no worker thread outlives its test by much).
    """

    def __init__(self, step: float = 1.0, sleep_s: float = 0.0) -> None:
        self.step = step
        self.sleep_s = sleep_s
        self.wake = threading.Event()
        self.seen: list[np.ndarray] = []

    def initial(self) -> tuple[ModelSpec, np.ndarray]:
        w = np.zeros(4, dtype=np.float32)
        return ModelSpec.from_arrays({"w": w}), w

    def fit(
        self, weights: np.ndarray, x: Any, y: Any, settings: TrainSettings, seed: int
    ) -> tuple[np.ndarray, dict[str, float]]:
        self.seen.append(weights.copy())
        if self.sleep_s:
            self.wake.wait(self.sleep_s)
        return weights + np.asarray(self.step, dtype=weights.dtype), {
            "lr": settings.lr,
            "seed": float(seed),
        }

    def evaluate(self, weights: np.ndarray, x: Any, y: Any) -> dict[str, float]:
        return {"loss": float(weights.sum())}


def make_site(name: str, n: int = 10, trainer: AddTrainer | None = None, n_eval: int = 2) -> Site:
    y = np.zeros(n)
    return Site(
        name,
        trainer or AddTrainer(),
        SiteData(np.zeros((n, 1)), y, np.zeros((n_eval, 1)), np.zeros(n_eval)),
    )


@dataclass
class SiteRun:
    """A ``run_site`` running in a thread: set ``stop`` to end it; ``result`` is what it
    returned (a ``JobEnded`` or None) once ``thread`` has finished."""

    thread: threading.Thread
    stop: threading.Event
    result: Any = field(default=None)


SiteStarter = Callable[..., SiteRun]


# ---- a custom message kind: two arrays of different dtypes, scalars of every type -------


@dataclass(frozen=True)
class ProbeIns:
    round: int
    image: np.ndarray  # uint8
    weights: np.ndarray  # float64
    label: str
    count: int
    strict: bool
    scale: float
    tags: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProbeRes:
    site: str
    round: int
    image: np.ndarray  # uint8, reversed
    scores: np.ndarray  # float64, weights * scale
    label: str
    count: int
    strict: bool
    tags: dict[str, Any] = field(default_factory=dict)


# No ``reply_arrays``: replies of this kind are held to a byte budget, not exact sizes.
PROBE = register_kind("grpc_probe", ProbeIns, ProbeRes)


class ProbeSite(SiteApp):
    """Answers probes by transforming every field, so each one is seen to travel both ways."""

    def on_grpc_probe(self, ins: ProbeIns) -> ProbeRes:
        return ProbeRes(
            self.site_id,
            ins.round,
            ins.image[::-1].copy(),
            ins.weights * ins.scale,
            ins.label.upper(),
            ins.count + 1,
            not ins.strict,
            {**ins.tags, "seen_by": self.site_id},
        )


def probe(round_: int = 1) -> ProbeIns:
    return ProbeIns(
        round_,
        np.arange(256, dtype=np.uint8),
        np.linspace(-1.0, 1.0, 5001),
        "héllo wörld",
        -(2**40),
        True,
        0.5,
        {"n": 3, "on": False, "x": 1.25, "t": "text"},
    )


# ---- the wire without a network -------------------------------------------------------


def wire(message: Any, *, reply: bool, chunk: int = 64, site: str | None = None) -> Any:
    """``message`` as a receiver rebuilds it from the bytes a sender would put on the wire."""
    payload = encode(message)
    body, arrays = codec.payload_to_pb(payload, chunk)
    header = pb.Payload.FromString(body.SerializeToString())
    asm = codec.PayloadAssembler(payload.kind, payload.round, header, 7, chunk, 2**20)
    for frame in codec.iter_payload_frames(arrays, 7, chunk):
        asm.add(pb.SiteMessage.FromString(frame).chunk)
    return decode(asm.result(), reply=reply, site=site)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True
