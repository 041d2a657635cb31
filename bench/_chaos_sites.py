"""The site app of the chaos fault benchmark (bench/_chaos_faults.py): a tiny NumPy task
whose fit announces every request with a marker file, then waits for the driver's word.

Why a gate: the driver decides from a seeded hash which sites fail in each round, and must
SIGKILL or SIGSTOP those sites *before* any healthy site's reply can end the phase; were
the healthy sites free to answer at once, whether a faulty site got its reply in first
would depend on timing, and two runs could not agree on the model. So every site, healthy
or not, writes ``<id>.wait`` (JSON: round, site, pid) and trains only once ``<id>.go``
exists. The driver releases the healthy ones after the faulty ones are dead or frozen; a
killed site never hears back, a stalled one is thawed and released after its round ended
(its reply then comes too late and is refused). The app itself never decides a fate.

The server imports this file too (``task.app``) for the model and the central test split.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from consortia import Dataset, Site, SiteData
from consortia.client.trainers.numpy import FunctionTrainer
from consortia.core.messages import FitIns, FitRes, TrainSettings

CHAOS_DIR_ENV = "CONSORTIA_CHAOS_DIR"
DIM = 8
_GO_POLL_S = 0.01
_GO_TIMEOUT_S = 600.0  # the driver is gone: fail this request rather than hang for ever


def make_model() -> dict[str, np.ndarray]:
    return {"w": np.zeros(DIM, np.float32), "b": np.zeros(1, np.float32)}


def load_data() -> Dataset:
    """The server's central test split (and a fallback train split nobody uses)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, DIM)).astype(np.float32) + np.float32(0.5)
    y = (x[:, 0] > 0.5).astype(np.int64)
    return Dataset(x[:40], y[:40], x[40:], y[40:])


def site_data(site_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Each site's own records, from a generator seeded by its name: the sites differ, so
    a different set of replies in any round gives a different model."""
    seed = int.from_bytes(site_name.encode()[:16].ljust(16, b"\0"), "little") % (2**63)
    rng = np.random.default_rng(seed)
    shift = rng.uniform(-2, 2, DIM).astype(np.float32)
    x = rng.standard_normal((int(rng.integers(8, 40)), DIM)).astype(np.float32) + shift
    return x, (x[:, 0] > shift[0]).astype(np.int64)


def fit(
    params: dict[str, np.ndarray], x: Any, y: Any, settings: TrainSettings, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Pull w toward the site's mean, plus noise from the seed the server derived for
    (round, site): a resumed server that derived another seed would change the digest."""
    noise = rng.standard_normal(DIM).astype(np.float32) * np.float32(0.05)
    lr = np.float32(settings.lr)
    w = params["w"] + lr * (x.mean(axis=0) - params["w"]) + noise
    b = params["b"] + lr * (np.float32(y.mean()) - params["b"])
    return {"w": w.astype(np.float32), "b": b.astype(np.float32)}, {"noise": float(noise.std())}


def evaluate(params: dict[str, np.ndarray], x: Any, y: Any) -> dict[str, float]:
    err = float(np.square(x - params["w"]).mean())
    return {"loss": err, "accuracy": 1.0 / (1.0 + err)}


def announce(folder: Path, rnd: int, site: str) -> Path:
    """Write this request's marker (atomically: the driver never reads half a file)."""
    marker = folder / f"{uuid.uuid4().hex}.wait"
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"round": rnd, "site": site, "pid": os.getpid()}))
    os.replace(tmp, marker)
    return marker


def wait_for_go(marker: Path, timeout_s: float = _GO_TIMEOUT_S) -> None:
    go = marker.with_suffix(".go")
    end = time.monotonic() + timeout_s
    while not go.exists():
        if time.monotonic() > end:
            raise RuntimeError(f"no go from the chaos driver for {marker.name} in {timeout_s:g} s")
        time.sleep(_GO_POLL_S)
    go.unlink(missing_ok=True)


class GatedSite(Site):
    """A Site whose every fit waits at the driver's gate first."""

    def __init__(self, folder: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.folder = folder

    def on_fit(self, ins: FitIns) -> FitRes:
        wait_for_go(announce(self.folder, ins.round, self.site_id))
        return super().on_fit(ins)


def make_site(site_name: str) -> Site:
    folder = os.environ.get(CHAOS_DIR_ENV)
    if not folder or not Path(folder).is_dir():
        raise RuntimeError(f"{CHAOS_DIR_ENV} must name the driver's marker folder, got {folder!r}")
    x, y = site_data(site_name)
    trainer = FunctionTrainer(make_model, fit, evaluate)
    return GatedSite(Path(folder), site_name, trainer, SiteData(x, y, x[:4], y[:4]))
