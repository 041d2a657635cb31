"""The run folder: everything a finished (or failed) run leaves behind.

Layout: ``job.toml`` (copy), ``state.sqlite`` (the run's store), ``partition.json``
(simulation: sites' sizes and label histograms), ``metrics.jsonl`` (one object per round),
``checkpoints/round_NNNN.safetensors``, ``model.safetensors`` (final global model),
``tensorboard/``, ``privacy.json`` (DP jobs), ``site_reports/`` (DP jobs: each site's own
figures, for that site only) and ``summary.json``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from consortia.core.errors import ConsortiaError
from consortia.core.serialize import save_model
from consortia.core.spec import ModelSpec


def default_run_dir(root: str | Path = "runs") -> Path:
    return Path(root) / time.strftime("%Y%m%d-%H%M%S")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


LOCK_FILE = ".lock"


class RunFolderBusy(ConsortiaError):
    """Another process is running a job in this run folder."""


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        self._lock: int | None = None

    def lock(self) -> None:
        """Hold the folder for this process until ``unlock`` (or its exit, even a crash):
        two servers writing one store and one set of checkpoints would corrupt both."""
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunFolderBusy(
                f"{self.path} is in use by another consortia process (it holds "
                f"{self.path / LOCK_FILE}); stop it first, or choose another output folder"
            ) from None
        self._lock = fd

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the lock
            self._lock = None

    def write_job(self, text: str, name: str = "job.toml") -> None:
        (self.path / name).write_text(text)

    def write_partition(self, sites: list[str], histograms: np.ndarray) -> None:
        _write_json(
            self.path / "partition.json",
            {
                "sites": {
                    s: {"examples": int(h.sum()), "labels": [int(v) for v in h]}
                    for s, h in zip(sites, histograms, strict=True)
                }
            },
        )

    def write_model(self, spec: ModelSpec, weights: np.ndarray) -> str:
        return save_model(self.path / "model.safetensors", spec, weights)

    def write_privacy(self, report: dict[str, Any]) -> None:
        _write_json(self.path / "privacy.json", report)

    def write_site_reports(self, reports: dict[str, dict[str, Any]]) -> None:
        """site_reports/<site>.json: each site's own privacy figures, for that site only
        (the operator hands each its file; they are not for publication). A site id that
        is not a plain file name is written under its SHA-256 instead."""
        folder = self.path / "site_reports"
        folder.mkdir(exist_ok=True)
        for site, report in reports.items():
            _write_json(folder / f"{site_report_name(site)}.json", report)

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_json(self.path / "summary.json", summary)


def run_summary(
    folder: RunFolder,
    *,
    job: str,
    status: str,
    rounds: int,
    rounds_completed: int,
    history: list[dict[str, Any]],
    seconds: float,
    digest: str,
    error: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """summary.json's common fields, for simulations and deployments alike."""
    last = history[-1] if history else {}
    summary: dict[str, Any] = {
        "job": job,
        "status": status,
        "rounds": rounds,
        "rounds_completed": rounds_completed,
        **extra,
        "seconds": round(seconds, 3),
        "failures": sum(int(r.get("failures", 0)) for r in history),
        "final_metrics": {k: v for k, v in last.items() if isinstance(v, float) and k != "seconds"},
        "model": str(folder.path / "model.safetensors"),
        "model_digest": digest,
        "run_dir": str(folder.path),
    }
    if error is not None:
        summary["error"] = error
    return summary


def site_report_name(site: str) -> str:
    """The file name (without .json) of a site's report: its id when that is a plain name."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", site):
        return site
    return "sha256-" + hashlib.sha256(site.encode()).hexdigest()
