"""What the job file's and the wire's checks need to know of each privacy mode, said once.

The mechanism objects (``consortia.privacy.mechanisms``) own everything a mode does, but
the schema validators and the message codec live in ``core``, below the privacy layer,
and cannot import them. Rather than compare mode strings in each rule, those rules ask
these facts; each mechanism class declares the same ``ModeFacts`` object as its ``facts``
(a test holds the two to agreement), so a mode's properties are written in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModeFacts:
    """One privacy mode as the lower layers see it."""

    name: str
    # The privacy unit: "site" (a site's whole contribution) or "example" (one record).
    unit: str
    # Job-file keys this mode cannot run without ("{name} DP needs {key}").
    requires: tuple[str, ...]
    # The job gives noise_multiplier or target_epsilon for a site-level mechanism.
    calibrated: bool
    # Sites are chosen by Poisson sampling at sample_rate (the sampling the accountant
    # assumes), not by sites_per_round / fraction.
    poisson_sampled: bool
    # The server clips and adds the noise to the sum (it is trusted with each update).
    server_noise: bool
    # Each site sends an integer encoding (uint64 modulo 2**bits) carrying its noise share;
    # the server never sees one update in the clear.
    encoded_updates: bool
    # Sites receive ClientPrivacy instructions in the fit message.
    client_instructions: bool
    # Adaptive clipping (Andrew et al. 2021) can move this mode's clip norm.
    adaptive_clipping: bool
    # What the mode's accounting events are, and whether the PLD accountant expresses them.
    events: str
    pld_accountant: bool

    @property
    def sum_only(self) -> bool:
        """Whether the guarantee covers only the sum of the updates, not each one: the
        noise is on the sum, so an aggregator or audit that reads single updates breaks it."""
        return self.server_noise or self.encoded_updates


CENTRAL = ModeFacts(
    name="central",
    unit="site",
    requires=("sample_rate", "clip_norm"),
    calibrated=True,
    poisson_sampled=True,
    server_noise=True,
    encoded_updates=False,
    client_instructions=True,
    adaptive_clipping=True,
    events="Poisson-subsampled Gaussian",
    pld_accountant=True,
)

DISTRIBUTED = ModeFacts(
    name="distributed",
    unit="site",
    requires=("sample_rate", "clip_norm"),
    calibrated=True,
    poisson_sampled=True,
    server_noise=False,
    encoded_updates=True,
    client_instructions=True,
    adaptive_clipping=False,
    events="zCDP",
    pld_accountant=False,
)

LOCAL = ModeFacts(
    name="local",
    unit="example",
    requires=("local_noise_multiplier",),
    calibrated=False,
    poisson_sampled=False,
    server_noise=False,
    encoded_updates=False,
    client_instructions=False,
    adaptive_clipping=False,
    events="DP-SGD (Poisson-subsampled Gaussian)",
    pld_accountant=True,
)

MODES: dict[str, ModeFacts] = {m.name: m for m in (CENTRAL, DISTRIBUTED, LOCAL)}
