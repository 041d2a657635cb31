"""A site's own policy: the jobs it joins and the rounds it takes part in, whatever the
server says.

Two checks. At welcome, before any of the job's rounds run, the job's manifest (what the
server declares: digest, signer, strategy, aggregator, privacy, secure aggregation, sites
per round) is held against the policy and the data-use agreement's expiry. Before every
round, the round's own instructions are checked again: the agreement may have expired
since, and what a round declares may differ from what the manifest promised. Privacy
costs are recomputed by the site from the round's declared parameters with its own
accountant; projections assume the site took part in every round so far, which
over-counts and so never under-protects. Every refusal's text starts with
``POLICY_REFUSAL_PREFIX`` and names the rule, so the server can recognise and record it.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, replace

from consortia.core.errors import ConfigError, ConsortiaError
from consortia.core.join import AgreementStatement, JoinRes
from consortia.core.manifest import POLICY_REFUSAL_PREFIX, JobManifest
from consortia.core.messages import FitIns
from consortia.core.policy_config import DataUseAgreementConfig, SitePolicyConfig, policy_digest
from consortia.privacy.accountant import PrivacyAccountant, PrivacyEvent
from consortia.privacy.budget import BudgetGuard
from consortia.privacy.mechanisms import round_mode, site_events
from consortia.security.signing import signed_by


class PolicyRefusal(ConsortiaError):
    """The site refuses this job or round; the message names the rule and why."""

    def __init__(self, rule: str, detail: str) -> None:
        self.rule = rule
        super().__init__(f"{POLICY_REFUSAL_PREFIX}{rule}: {detail}")


def projected_events(ins: FitIns, num_examples: int, dimension: int) -> list[PrivacyEvent]:
    """Privacy events of rounds 1..ins.round as this site can compute them itself."""
    return site_events(ins.privacy, ins.settings, num_examples, ins.round, dimension)


@dataclass(frozen=True)
class DataUseAgreement:
    """The agreement the site's data is used under; it holds through ``expires``."""

    reference: str
    purpose: str
    parties: tuple[str, ...]
    expires: dt.date


def round_privacy_mode(ins: FitIns) -> str | None:
    """The privacy a round's instructions carry: central/distributed, local or none."""
    return round_mode(ins.privacy, ins.settings)


@dataclass(frozen=True)
class SitePolicy:
    """A site's rules (see docs/deployment.md, "The site policy file", for each key).

    ``max_epsilon``: the most the site will spend (at ``delta``) on this job;
    ``require_privacy``: refuse any job or round without differential privacy;
    ``accepted_job_digests`` / ``accepted_job_signers``: the job file must be one of
    these digests or signed by one of these keys (either suffices; both empty: any job);
    ``allowed_strategies`` / ``allowed_aggregators``: None allows every one;
    ``require_secure_aggregation``; ``min_sites_per_round``; ``data_use_agreement``.
    """

    max_epsilon: float | None = None
    delta: float = 1e-5
    require_privacy: bool = False
    accepted_job_digests: tuple[str, ...] = ()
    accepted_job_signers: tuple[str, ...] = ()
    allowed_strategies: tuple[str, ...] | None = None
    allowed_aggregators: tuple[str, ...] | None = None
    require_secure_aggregation: bool = False
    min_sites_per_round: int | None = None
    data_use_agreement: DataUseAgreement | None = None

    def __post_init__(self) -> None:
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise ConfigError(f"site policy: max_epsilon must be > 0, got {self.max_epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"site policy: delta must be in (0, 1), got {self.delta}")

    @classmethod
    def from_config(cls, cfg: SitePolicyConfig) -> SitePolicy:
        dua = cfg.data_use_agreement
        return cls(
            max_epsilon=cfg.max_epsilon,
            delta=cfg.delta,
            require_privacy=cfg.require_privacy,
            accepted_job_digests=tuple(cfg.accepted_job_digests),
            accepted_job_signers=tuple(cfg.accepted_job_signers),
            allowed_strategies=_tuple(cfg.allowed_strategies),
            allowed_aggregators=_tuple(cfg.allowed_aggregators),
            require_secure_aggregation=cfg.require_secure_aggregation,
            min_sites_per_round=cfg.min_sites_per_round,
            data_use_agreement=None
            if dua is None
            else DataUseAgreement(dua.reference, dua.purpose, tuple(dua.parties), dua.expires),
        )

    def config(self) -> SitePolicyConfig:
        """The policy as its file would say it (every key), which its digest is of."""
        dua = self.data_use_agreement
        return SitePolicyConfig(
            max_epsilon=self.max_epsilon,
            delta=self.delta,
            require_privacy=self.require_privacy,
            accepted_job_digests=list(self.accepted_job_digests),
            accepted_job_signers=list(self.accepted_job_signers),
            allowed_strategies=_list(self.allowed_strategies),
            allowed_aggregators=_list(self.allowed_aggregators),
            require_secure_aggregation=self.require_secure_aggregation,
            min_sites_per_round=self.min_sites_per_round,
            data_use_agreement=None
            if dua is None
            else DataUseAgreementConfig(
                reference=dua.reference,
                purpose=dua.purpose,
                parties=list(dua.parties),
                expires=dua.expires,
            ),
        )

    def digest(self) -> str:
        """What the site states when it joins a job (``policy_digest``): the same rules
        give the same digest in simulation and in deployment."""
        return policy_digest(self.config())

    def join_reply(self, reply: JoinRes) -> JoinRes:
        """``reply`` with this policy's statement: its digest and its agreement."""
        cfg = self.config()
        dua = cfg.data_use_agreement
        return replace(
            reply,
            policy_sha256=policy_digest(cfg),
            agreement=None if dua is None else AgreementStatement.of(dua),
        )

    # ---- at welcome ----------------------------------------------------------------------

    def check_join(self, site_id: str, manifest: JobManifest | None, today: dt.date) -> None:
        """Refuse to join the job ``manifest`` declares (None: the server declared none)."""
        who = f"site {site_id} refuses to join"
        self._check_agreement(who, today)
        if manifest is None:
            if self.needs_manifest:
                raise PolicyRefusal(
                    "manifest", f"{who}: the server declared no job manifest to check"
                )
            return
        who = f"site {site_id} refuses to join job {manifest.job_id}"
        problems = join_problems(self, manifest)
        if problems:
            rule, detail = problems[0]
            more = f" (and {len(problems) - 1} more rule(s))" if len(problems) > 1 else ""
            raise PolicyRefusal(rule, f"{who}: {detail}{more}")

    @property
    def needs_manifest(self) -> bool:
        """Whether a rule can be judged only from the job's declaration (the others are
        checked again on every round's own instructions)."""
        return bool(
            self.accepted_job_digests
            or self.accepted_job_signers
            or self.allowed_strategies is not None
            or self.allowed_aggregators is not None
            or self.require_secure_aggregation
        )

    def _check_agreement(self, who: str, today: dt.date) -> None:
        dua = self.data_use_agreement
        if dua is not None and today > dua.expires:
            raise PolicyRefusal(
                "data_use_agreement",
                f"{who}: its data-use agreement {dua.reference} expired on {dua.expires}",
            )

    # ---- before every round --------------------------------------------------------------

    def check_fit(
        self,
        site_id: str,
        ins: FitIns,
        num_examples: int,
        dimension: int,
        manifest: JobManifest | None = None,
        today: dt.date | None = None,
    ) -> None:
        """Refuse round ``ins.round``: agreement expired, fewer sites than the policy's
        minimum, privacy other than the manifest declared, or over the epsilon limit."""
        who = f"site {site_id} refuses round {ins.round}"
        self._check_agreement(who, today or dt.date.today())
        if self.min_sites_per_round is not None and ins.sites < self.min_sites_per_round:
            asked = f"asks {ins.sites} site(s)" if ins.sites else "does not say how many sites"
            raise PolicyRefusal(
                "min_sites_per_round",
                f"{who}: the round {asked}; its policy needs at least {self.min_sites_per_round}",
            )
        if self.require_secure_aggregation and ins.secagg is None:
            raise PolicyRefusal(
                "require_secure_aggregation",
                f"{who}: the round asks for a plain update; its policy requires secure aggregation",
            )
        mode = round_privacy_mode(ins)
        if manifest is not None:
            declared = manifest.privacy.mode if manifest.privacy else None
            if mode != declared:
                raise PolicyRefusal(
                    "manifest",
                    f"{who}: the round carries privacy {mode or 'none'}, the job's manifest "
                    f"declared {declared or 'none'}",
                )
        elif self.needs_manifest:
            raise PolicyRefusal("manifest", f"{who}: the site never accepted this job's manifest")
        if self.require_privacy and mode is None:
            raise PolicyRefusal(
                "require_privacy",
                f"{who}: its policy requires differential privacy and the job has none",
            )
        if self.max_epsilon is None:
            return
        # RDP: a few milliseconds, every round (see consortia.privacy.budget).
        guard = BudgetGuard(self.max_epsilon, self.delta, "rdp", f"site {site_id}")
        events = projected_events(ins, num_examples, dimension)
        eps = guard.epsilon(PrivacyAccountant(), events) if events else math.inf
        if not guard.decide(0.0, eps).allowed:
            shown = "unbounded" if math.isinf(eps) else f"{eps:.4g}"
            raise PolicyRefusal(
                "max_epsilon",
                f"{who}: its epsilon would reach {shown}, over its limit of "
                f"{self.max_epsilon:g} (delta {self.delta:g})",
            )


def _tuple(items: list[str] | None) -> tuple[str, ...] | None:
    return None if items is None else tuple(items)


def _list(items: tuple[str, ...] | None) -> list[str] | None:
    return None if items is None else list(items)


def join_problems(policy: SitePolicy, m: JobManifest) -> list[tuple[str, str]]:
    """Every rule of ``policy`` that the job ``m`` declares breaks: (rule, why)."""
    out: list[tuple[str, str]] = []
    digests, signers = policy.accepted_job_digests, policy.accepted_job_signers
    if (
        (digests or signers)
        and m.job_digest not in digests
        and signed_by(m.job_digest, m.job_signature, list(signers)) is None
    ):
        rule = "accepted_job_signers" if signers else "accepted_job_digests"
        signed = "unsigned" if not m.job_signature else "not signed by an accepted signer"
        out.append(
            (
                rule,
                f"its job file (sha256 {m.job_digest[:16]}...) is not an accepted "
                f"digest and is {signed}",
            )
        )
    if policy.allowed_strategies is not None and m.strategy not in policy.allowed_strategies:
        out.append(
            (
                "allowed_strategies",
                f"strategy {m.strategy!r} is not in {list(policy.allowed_strategies)}",
            )
        )
    if policy.allowed_aggregators is not None and m.aggregator not in policy.allowed_aggregators:
        out.append(
            (
                "allowed_aggregators",
                f"aggregator {m.aggregator!r} is not in {list(policy.allowed_aggregators)}",
            )
        )
    if policy.require_secure_aggregation and not m.secure_aggregation:
        out.append(("require_secure_aggregation", "the job does not use secure aggregation"))
    need = policy.min_sites_per_round
    if need is not None and m.min_sites < need:
        out.append(
            (
                "min_sites_per_round",
                f"the job runs rounds with as few as {m.min_sites} "
                f"site(s); the policy needs at least {need}",
            )
        )
    p = m.privacy
    if (policy.require_privacy or policy.max_epsilon is not None) and p is None:
        rule = "require_privacy" if policy.require_privacy else "max_epsilon"
        out.append((rule, "the job has no differential privacy"))
    if p is not None and policy.max_epsilon is not None:
        declared = [e for e in (p.target_epsilon, p.epsilon_limit) if e is not None]
        if declared and min(declared) > policy.max_epsilon:
            out.append(
                (
                    "max_epsilon",
                    f"the job declares epsilon {min(declared):g}, over the "
                    f"policy's limit of {policy.max_epsilon:g}",
                )
            )
    return out
