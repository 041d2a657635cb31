"""The digits task as one real site: ``consortia client --app examples/digits/site.py:make_site``.

In a real federation each site loads its own records here. So that a federation can be
tried on one machine, this example gives each site one shard of the digits train split,
chosen by its name: the train split is cut into ``CONSORTIA_DIGITS_SHARDS`` (default 3)
IID shards (seed 0, the same on every machine) and a site takes

- shard ``k`` when its name ends in ``-k`` (``site-0``, ``site-1``, ...), or
- shard ``0, 1, 2, ...`` when it ends in ``-a``, ``-b``, ``-c``, ... (``hospital-a``), or
- otherwise a shard picked by a stable hash (SHA-256) of the name,

modulo the number of shards. A fifth of the shard is kept aside for federated evaluation.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from consortia import Site, SiteData, TorchTrainer, load_app, make_partition

# The task's own module next to this file (the job's [task] app), loaded under a unique name.
_APP = load_app("app.py", Path(__file__).parent)

EVAL_FRACTION = 0.2


def shard_index(site_name: str, shards: int) -> int:
    """Which shard a site takes: its trailing number or letter, else a stable hash."""
    if m := re.search(r"[-_.](\d+)$", site_name):
        return int(m.group(1)) % shards
    if m := re.search(r"[-_.]([a-z])$", site_name):
        return (ord(m.group(1)) - ord("a")) % shards
    return int.from_bytes(hashlib.sha256(site_name.encode()).digest()[:8], "big") % shards


def make_site(site_name: str) -> Site:
    shards = int(os.environ.get("CONSORTIA_DIGITS_SHARDS", "3"))
    data = _APP.load_data()
    parts = make_partition("iid", data.y_train, shards, seed=0)
    idx = np.asarray(parts[shard_index(site_name, shards)])
    n_eval = int(EVAL_FRACTION * len(idx))
    train, held = idx[n_eval:], idx[:n_eval]
    return Site(
        site_name,
        TorchTrainer(_APP.make_model),
        SiteData(data.x_train[train], data.y_train[train], data.x_train[held], data.y_train[held]),
    )
