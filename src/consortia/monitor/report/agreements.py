"""The report's data-use agreements section: which agreement each site's data was used
under, until when, and which sites' policies said no.

Agreements come from two records. The ledger's site_joined entries carry a site's policy
digest and agreement when the site declared them. A simulation's job file declares its
virtual sites' policies itself (``[simulation.site_policy]`` and ``site_policies``), and
the ledger vouches for that file through its digest. Each agreement's expiry is held
against the day the job ended (did it hold throughout?) and the day of the report (does
it still?). Refusals come from summary.json; under DP only refusals to join are listed
(every site is asked to join, so naming one says nothing of any round's sample); which
sites refused which rounds is left out.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from pydantic import ValidationError

from consortia.core.policy_config import DataUseAgreementConfig, SitePolicyConfig
from consortia.ledger import kinds as K
from consortia.monitor.report.sources import ReportError, RunFiles

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def _expiry(expires: dt.date, ended: dt.date | None, today: dt.date) -> dict[str, Any]:
    return {
        "expires": expires.isoformat(),
        "held_when_job_ended": None if ended is None else ended <= expires,
        "expired_on_report_date": today > expires,
    }


def _agreement(raw: Any, ended: dt.date | None, today: dt.date) -> dict[str, Any] | None:
    """An agreement as a site_joined entry records it: the whole agreement, or only its
    reference (a string)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return {"reference": raw}
    try:
        dua = DataUseAgreementConfig.model_validate(raw)
    except ValidationError:
        return {"reference": None, "recorded": str(raw)[:500], "valid": False}
    return {
        "reference": dua.reference,
        "purpose": dua.purpose,
        "parties": list(dua.parties),
        **_expiry(dua.expires, ended, today),
    }


def _job_policies(files: RunFiles) -> dict[str, SitePolicyConfig]:
    """The virtual sites' policies a simulation's job file declares ('*': every site
    without its own)."""
    if files.job_bytes is None:
        return {}
    try:
        text = files.job_bytes.decode()
        job = json.loads(text) if files.job_file == "job.json" else tomllib.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ReportError(f"{files.run_dir / str(files.job_file)}: unreadable ({exc})") from None
    sim = job.get("simulation") if isinstance(job, dict) else None
    if not isinstance(sim, dict):
        return {}
    raw: dict[str, Any] = dict(sim.get("site_policies") or {})
    if sim.get("site_policy") is not None:
        raw["*"] = sim["site_policy"]
    try:
        return {site: SitePolicyConfig.model_validate(p) for site, p in raw.items()}
    except ValidationError as exc:
        raise ReportError(f"{files.job_file}: a site policy is invalid ({exc})") from None


def _ended(files: RunFiles) -> dt.date | None:
    for e in reversed(files.entries):
        if e.kind == K.JOB_FINISHED:
            try:
                return dt.date.fromisoformat(e.time[:10])
            except ValueError:
                return None
    return None


def agreements_section(files: RunFiles, dp: bool, today: dt.date) -> dict[str, Any]:
    ended = _ended(files)
    recorded = []
    for e in files.entries:
        if e.kind != K.SITE_JOINED:
            continue
        try:
            data = e.data()
        except ValueError:
            continue
        recorded.append((str(data.get("site")), data))
    by_site = dict(recorded)  # a site's latest join
    ledger = [
        {
            "site": site,
            "policy_sha256": d.get("policy_sha256"),
            "agreement": _agreement(d.get("dua"), ended, today),
        }
        for site, d in sorted(by_site.items())
        if d.get("policy_sha256") is not None or d.get("dua") is not None
    ]
    declared = [
        {
            "applies_to": "every virtual site without its own policy" if site == "*" else site,
            "reference": p.data_use_agreement.reference,
            "purpose": p.data_use_agreement.purpose,
            "parties": list(p.data_use_agreement.parties),
            **_expiry(p.data_use_agreement.expires, ended, today),
        }
        for site, p in sorted(_job_policies(files).items())
        if p.data_use_agreement is not None
    ]
    refusals = (files.summary or {}).get("policy_refusals")
    if not isinstance(refusals, dict):
        refusals = {}
    join = refusals.get("join")
    if not isinstance(join, dict):
        join = {}
    out: dict[str, Any] = {
        "title": "Data-use agreements",
        "job_ended_on": None if ended is None else ended.isoformat(),
        "recorded_in_ledger": ledger
        or "no site_joined entry records a policy digest or an agreement",
        "declared_in_job_file": declared,
        "join_refusals": [{"site": str(s), "reason": str(r)} for s, r in sorted(join.items())],
    }
    rounds = refusals.get("rounds")
    if not dp and isinstance(rounds, dict):
        out["round_refusals"] = [{"site": str(s), "rounds": n} for s, n in sorted(rounds.items())]
    elif dp:
        out["note"] = (
            "Which sites' policies refused which rounds is left out under differential "
            "privacy (a refusal shows the site was sampled)."
        )
    return out
