"""The compliance report's content: one pure function per section, from a run's files.

The content is plain JSON (report.json is exactly it; report.html renders it). Two rules
shape every section:

* State only what the records state. The privacy guarantee and its threat model are
  quoted from privacy.json; job and model digests from the signed ledger; nothing is
  inferred that a file does not say, and a missing record is reported as missing.
* Under differential privacy nothing says who took part in which round, or how many:
  amplification by sampling assumes the sample stays secret (docs/privacy.md). Sites are
  listed by certificate, counts are totals over the run, and no site is named next to a
  refusal or an audit flag.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections import Counter
from typing import Any

from consortia.ledger import kinds as K
from consortia.ledger.chain import Entry
from consortia.monitor.report.agreements import agreements_section
from consortia.monitor.report.sources import RunFiles

FORMAT = "consortia compliance report 1"
DP_NOTE = (
    "Under differential privacy this report does not say which sites took part in any "
    "round, nor how many: the privacy guarantee assumes the sample stays secret. The "
    "server's store (state.sqlite) keeps that record for audits; it is not published."
)
# Round-by-round keys of metrics.jsonl that are not the model's quality.
NOT_QUALITY = {"round", "seconds", "epsilon"}


def payload(e: Entry) -> dict[str, Any]:
    """An entry's payload; {} for one that does not parse (the verifier names it)."""
    try:
        data = json.loads(e.payload)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def of_kind(entries: list[Entry], kind: str) -> list[dict[str, Any]]:
    return [payload(e) for e in entries if e.kind == kind]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def is_dp(files: RunFiles) -> bool:
    """A DP run by the ledger's job declaration or by its privacy.json: either one makes
    the report hold back participation."""
    created = of_kind(files.entries, K.JOB_CREATED)
    declared = bool(created) and created[0].get("privacy") is not None
    return declared or files.privacy is not None


def job_section(files: RunFiles, version: str) -> dict[str, Any]:
    created = (of_kind(files.entries, K.JOB_CREATED) or [{}])[0]
    checkpoints = of_kind(files.entries, K.CHECKPOINT_WRITTEN)
    closed = of_kind(files.entries, K.ROUND_CLOSED)
    finished = of_kind(files.entries, K.JOB_FINISHED)
    summary = files.summary or {}
    strategy = created.get("strategy")
    if not isinstance(strategy, dict):
        strategy = {}
    recorded = _text(created.get("job_sha256"))
    on_disk = None if files.job_bytes is None else hashlib.sha256(files.job_bytes).hexdigest()
    final = _text(closed[-1].get("model_digest")) if closed else None
    return {
        "title": "Job and code",
        "job_name": _text(created.get("name")),
        "job_id": _text(created.get("job_id")),
        "status": _text(finished[-1].get("status")) if finished else "not finished",
        "rounds_completed": len(closed),
        "strategy": _text(strategy.get("preset")),
        "aggregator": _text(strategy.get("aggregator")),
        "job_file": files.job_file,
        "job_sha256": recorded,
        "job_file_matches_ledger": None if on_disk is None else on_disk == recorded,
        "model_spec_digest": _text(created.get("spec_digest")),
        "initial_model_digest": _text(checkpoints[0].get("model_digest")) if checkpoints else None,
        "final_model_digest": final,
        "summary_model_digest_matches": (
            None if "model_digest" not in summary else summary["model_digest"] == final
        ),
        "consortia_version": _text(created.get("consortia_version"))
        or "not recorded in the ledger (written before versions were recorded)",
        "report_written_by": f"consortia {version}",
    }


def participants_section(files: RunFiles, dp: bool) -> dict[str, Any]:
    """Each site's certificate as its latest site_joined entry records it, sorted by name
    (not by when it joined: under DP the order would tell the round)."""
    latest: dict[str, dict[str, Any]] = {}
    for data in of_kind(files.entries, K.SITE_JOINED):
        latest[str(data.get("site"))] = data
    sites = [
        {
            "site": site,
            "key_type": _text(d.get("key_type")),
            "certificate_serial": _text(d.get("certificate_serial")),
            "policy_sha256": _text(d.get("policy_sha256")),
        }
        for site, d in sorted(latest.items())
    ]
    size = (files.summary or {}).get("sites")
    out: dict[str, Any] = {
        "title": "Participants by certificate",
        "federation_size": size if isinstance(size, int) else None,
        "sites": sites,
        "listed": "each site admitted to the job, as the ledger's site_joined entries "
        "record it (certificate serial, key type, policy digest), whether or not a round "
        "sampled it",
    }
    if dp:
        out["note"] = DP_NOTE
    return out


def privacy_section(files: RunFiles, dp: bool) -> dict[str, Any]:
    """privacy.json's own statements, quoted; nothing added."""
    p = files.privacy
    if p is None:
        statement = (
            "privacy.json is missing although the job declared differential privacy: no "
            "guarantee can be stated"
            if dp
            else "This job used no differential privacy: the report states no privacy guarantee."
        )
        return {"title": "Privacy guarantee", "differential_privacy": dp, "statement": statement}
    quoted = (
        "mode",
        "level",
        "neighbouring",
        "epsilon",
        "epsilon_max_over_sites",
        "delta",
        "accountant_for_budget",
        "guarantees",
        "mechanism",
        "sampling",
        "budget",
        "noise_source",
        "sites_seeded_noise",
        "outside_guarantee",
    )
    out: dict[str, Any] = {"title": "Privacy guarantee", "differential_privacy": True}
    out |= {k: p[k] for k in quoted if k in p}
    out["threat_model"] = p.get("threat_model") or "privacy.json does not state against whom"
    return out


def secure_aggregation_section(files: RunFiles, dp: bool) -> dict[str, Any]:
    """Whether the job declared secure aggregation (the ledger's job entry, signed) and,
    from summary.json, what the server saw: per round without DP, totals under DP (like
    every other section; privacy.json has the rows, see docs/secure_aggregation.md)."""
    created = (of_kind(files.entries, K.JOB_CREATED) or [{}])[0]
    settings = created.get("secure_aggregation")
    used = isinstance(settings, dict)
    guarantees = (files.privacy or {}).get("guarantees") or {}
    out: dict[str, Any] = {"title": "Secure aggregation", "used": used}
    if used:
        seen = (files.summary or {}).get("secure_aggregation") or {}
        rows = [r for r in seen.get("per_round") or [] if isinstance(r, dict)]
        total = {
            key: sum(int(r.get(key) or 0) for r in rows)
            for key in ("masked_inputs", "dropouts_recovered", "individual_updates_unmasked")
        }
        out["statement"] = (
            "used: SecAgg+; the server received masked inputs only and unmasked each round's "
            f"sum: {len(rows)} rounds, {total['masked_inputs']} masked inputs, "
            f"{total['dropouts_recovered']} dropouts recovered, "
            f"{total['individual_updates_unmasked']} individual updates unmasked"
        )
        out["settings"] = settings
        if not dp:
            out["per_round"] = rows
    elif "against_the_server" in guarantees:  # privacy.json's own word: distributed DP
        out["statement"] = (
            "not used: the server received each site's encoded, noised update (see the "
            "privacy guarantee's against_the_server)"
        )
    else:
        out["statement"] = "not used: the server received each site's update"
    return out


def validation_section(files: RunFiles, dp: bool) -> dict[str, Any]:
    received = of_kind(files.entries, K.UPDATE_RECEIVED)
    refused = of_kind(files.entries, K.UPDATE_REFUSED)
    flags: Counter[str] = Counter()
    flagged = 0
    for data in received:
        these = data.get("audit_flags")
        if isinstance(these, list) and these:
            flagged += 1
            flags.update(str(f) for f in these)
    out: dict[str, Any] = {
        "title": "Validation and audit flags",
        "updates_refused": len(refused),
        "updates_flagged": flagged,
        "audit_flags": dict(sorted(flags.items())),
    }
    if dp:
        out["note"] = "Totals over the whole run; no site is named. " + DP_NOTE
        return out
    out["updates_accepted"] = len(received)
    per_site: dict[str, Counter[str]] = {}
    for kind, what in (
        (K.UPDATE_RECEIVED, "accepted"),
        (K.UPDATE_REFUSED, "refused"),
        (K.SITE_REFUSED, "policy_refusals"),
        (K.SITE_FAILED, "failed"),
    ):
        for data in of_kind(files.entries, kind):
            count = per_site.setdefault(str(data.get("site")), Counter())
            count[what] += 1
            if kind == K.UPDATE_RECEIVED and data.get("audit_flags"):
                count["flagged"] += 1
    columns = ("accepted", "refused", "flagged", "policy_refusals", "failed")
    out["per_site"] = [
        {"site": site} | {c: n[c] for c in columns} for site, n in sorted(per_site.items())
    ]
    out["refusals"] = [
        {"round": d.get("round"), "site": _text(d.get("site")), "reason": _text(d.get("reason"))}
        for d in refused
    ]
    return out


def ledger_section(files: RunFiles, dp: bool) -> dict[str, Any]:
    v = files.verify
    created = (of_kind(files.entries, K.JOB_CREATED) or [{}])[0]
    out: dict[str, Any] = {
        "title": "Ledger",
        "verified": v.ok,
        "result": "verified: every hash, link, signature and checkpoint checks out"
        if v.ok
        else f"FAILED at {v.problem}",
        "problem": None
        if v.problem is None
        else {"index": v.problem.index, "kind": v.problem.kind, "what": v.problem.what},
        "head_hash": v.head,
        "ledger_public_key": _text(created.get("ledger_public_key")),
        "checkpoints_checked": v.checkpoints,
        "all_updates_signed": v.unsigned_updates == 0,
        "check_it_yourself": "consortia audit verify RUN_DIR",
    }
    if not dp:
        out["entries"] = v.entries
        out["site_signatures_checked"] = v.site_signatures
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def accuracy_section(files: RunFiles) -> dict[str, Any]:
    """The model's quality per round: every ``*accuracy`` metric, or (a task without one)
    every other numeric metric, as (round, value) points."""
    names: list[str] = []
    for row in files.metrics:
        names += [k for k in row if k not in NOT_QUALITY and k not in names]
    chosen = [n for n in names if n.endswith("accuracy")] or names
    curves = []
    for name in chosen:
        points = [
            [int(r["round"]), v]
            for r in files.metrics
            if isinstance(r.get("round"), int) and (v := _number(r.get(name))) is not None
        ]
        if points:
            curves.append({"metric": name, "points": points})
    return {
        "title": "Accuracy",
        "source": "metrics.jsonl (the global model, evaluated after each round)",
        "curves": curves,
    }


def build_report(files: RunFiles, version: str, today: dt.date) -> dict[str, Any]:
    """report.json's content; ``today`` dates the agreements' expiry check."""
    dp = is_dp(files)
    return {
        "format": FORMAT,
        "generated_on": today.isoformat(),
        "run_dir": str(files.run_dir),
        "differential_privacy": dp,
        "sections": {
            "job": job_section(files, version),
            "participants": participants_section(files, dp),
            "agreements": agreements_section(files, dp, today),
            "privacy": privacy_section(files, dp),
            "secure_aggregation": secure_aggregation_section(files, dp),
            "validation": validation_section(files, dp),
            "ledger": ledger_section(files, dp),
            "accuracy": accuracy_section(files),
        },
    }
