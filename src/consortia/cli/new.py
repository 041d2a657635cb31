"""``consortia new DIR --framework torch|sklearn|numpy``: a project to start from."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("new", help="write a runnable project (job file, task app, site app)")
    p.add_argument("folder", type=Path, help="a new (or empty) folder")
    p.add_argument("--framework", default="torch", help="torch (default), sklearn or numpy")
    p.add_argument("--name", help="the job's name (default: the folder's name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from consortia.scaffold import new_project

    files = new_project(args.folder, args.framework, args.name)
    for f in files:
        print(f"wrote {f}")
    print(f"next: cd {args.folder} && consortia simulate job.toml --out runs/first")
    return 0
