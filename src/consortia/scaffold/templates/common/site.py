"""One real site of {{name}}: `consortia client --app site.py:make_site --site NAME ...`.

``make_site(name)`` returns this site's app with ITS OWN records: this is the one place
a site's data is read, and none of it leaves the site (only model updates do). Here, so
that the project runs as it is, each site takes a share of the example data by its name;
replace ``_my_records`` with your own loading (files, a database query, ...).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

import consortia

# The task next to this file (its model), loaded under a name of its own.
TASK = consortia.load_app("app.py", Path(__file__).parent)

SHARES = 4


def _my_records(name: str) -> tuple[np.ndarray, np.ndarray]:
    data = TASK.load_data()
    share = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % SHARES
    rows = np.arange(len(data.y_train)) % SHARES == share
    return data.x_train[rows], data.y_train[rows]


def make_site(name: str) -> consortia.Site:
    x, y = _my_records(name)
    held_out = np.arange(len(y)) % 5 == 0  # a fifth for federated evaluation
    data = consortia.SiteData(x[~held_out], y[~held_out], x[held_out], y[held_out])
    return consortia.Site(name, {{trainer}}, data)
