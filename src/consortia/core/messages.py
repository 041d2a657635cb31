"""Message kinds of the round protocol: a registry, and the built-in fit and evaluate kinds.

A kind is a name, a request class, a reply class and the checks a reply must pass before
it touches server state. Classes are frozen dataclasses holding numpy vectors and scalars;
transports carry them as a ``Payload`` (core/payload.py), never as pickles, so registering
a kind on both sides is all a new phase needs: no transport, codec or proto edit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consortia.core.errors import ConfigError
from consortia.core.payload import (
    SITE_LOCAL,
    InvalidMessageError,
    Payload,
    from_payload,
    to_payload,
)
from consortia.core.privacy_modes import MODES
from consortia.core.spec import all_finite

__all__ = [
    "ClientPrivacy",
    "EvaluateIns",
    "EvaluateRes",
    "Failure",
    "FitIns",
    "FitRes",
    "InvalidMessageError",
    "MessageKind",
    "Outcome",
    "Payload",
    "Reply",
    "SecureInput",
    "TrainSettings",
    "check_reply",
    "decode",
    "encode",
    "kind_named",
    "kind_of",
    "register_kind",
]

MAX_METRICS = 256
MAX_NAME_CHARS = 128
MAX_EXAMPLES = 2**53  # beyond this a float weight cannot represent the count exactly
MAX_SIGNATURE_CHARS = 128  # base64 of a DER ECDSA P-256 signature (<= 72 bytes) fits
MAX_JOB_CHARS = 256
_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


@dataclass(frozen=True)
class TrainSettings:
    """Client-side training settings the strategy sends with each fit request."""

    local_epochs: int = 1
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # Local DP-SGD (example-level DP, Opacus): off while dp_noise_multiplier is 0.
    dp_noise_multiplier: float = 0.0
    dp_max_grad_norm: float = 1.0
    # Set by the site itself (simulation only: ``Site.noise_seed``), never by the server:
    # it does not travel, so a server cannot make a site's DP-SGD noise predictable.
    dp_seeded_noise: bool = field(default=False, metadata={SITE_LOCAL: True})

    @property
    def local_dp(self) -> bool:
        return self.dp_noise_multiplier > 0


@dataclass(frozen=True)
class ClientPrivacy:
    """What a site must do to its update this round, and what it needs to check the cost.

    Under ``mode`` "central" the site clips the update to ``clip_norm`` (the server adds
    the noise); under "distributed" it clips, scales by ``scale``, rounds, adds its share
    of discrete Gaussian noise and wraps modulo 2**bits (Kairouz et al. 2021), so that no
    one sees an un-noised sum once secure aggregation sums the shares.
    ``noise_multiplier``, ``sample_rate`` and ``rounds`` are the server's declared
    accounting, which the site's own policy recomputes and may refuse.
    There is no noise seed: a site draws its noise share from its own CSPRNG (or, in
    simulation only, from a seed it derives itself), so the server cannot regenerate it.
    """

    mode: str
    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    delta: float
    scale: float = 0.0
    bits: int = 0
    min_sites: int = 0


@dataclass(frozen=True)
class SecureInput:
    """Secure aggregation's part of a fit request: the share bundles addressed to this site
    (``consortia.secagg``), one per neighbour in ``senders`` (ascending protocol ids). The
    site answers with its masked input in Z_(2^bits): int32 (the same 32 bits, viewed
    signed) when bits <= 32, else uint64."""

    bits: int
    senders: np.ndarray  # int64[m]
    bundles: np.ndarray  # uint8[m * bundle size]


def ring_dtype(bits: int) -> np.dtype:
    """How a masked input of ``bits`` travels: 32-bit words when they suffice."""
    return np.dtype(np.int32) if bits <= 32 else np.dtype(np.uint64)


@dataclass(frozen=True)
class FitIns:
    """Server -> site: train from this global model."""

    round: int
    weights: np.ndarray
    settings: TrainSettings
    seed: int
    privacy: ClientPrivacy | None = None
    # How many sites this round asks (0: not said). A number, never who: a site's policy
    # may refuse a round with fewer sites than it requires.
    sites: int = 0
    # The job's id: part of what the site signs, so a signature is for one job only.
    job: str | None = None
    # Set when the round runs secure aggregation: the reply's delta is a masked input.
    secagg: SecureInput | None = None


@dataclass(frozen=True)
class FitRes:
    """Site -> server: the update (local - global), how many examples made it, metrics."""

    site: str
    round: int
    delta: np.ndarray
    num_examples: int
    metrics: dict[str, float]
    # Central DP with adaptive clipping: +1/2 if the update was within the clip norm, else
    # -1/2 (Andrew et al. 2021); the server sums these bits with noise.
    clip_bit: float | None = None
    # The site drew its DP noise from a seed (simulation's reproducible runs), not from its
    # CSPRNG: its own privacy report says so, since such noise gives no protection.
    seeded_noise: bool = False
    # base64 of the site's signature over (job, round, digest of ``delta``): the ledger
    # keeps it as the site's own word for what it sent (consortia.ledger.sign).
    signature: str | None = None


@dataclass(frozen=True)
class EvaluateIns:
    """Server -> site: evaluate this global model on local held-out data."""

    round: int
    weights: np.ndarray


@dataclass(frozen=True)
class EvaluateRes:
    site: str
    round: int
    num_examples: int
    metrics: dict[str, float]


# ---- outcomes of sending a request --------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    site: str
    message: Any


@dataclass(frozen=True)
class Failure:
    site: str
    reason: str


Outcome = Reply | Failure


# ---- the registry ----------------------------------------------------------------------------

ReplyCheck = Callable[[Any, Any], None]
RequestCheck = Callable[[Any], None]
ReplyArrays = Callable[[Any], dict[str, tuple[int, np.dtype]]]


@dataclass(frozen=True)
class MessageKind:
    """``check(reply, request)`` raises InvalidMessageError for a reply the server must not
    use; ``check_request(request)`` for a request a site must not act on (a deployed site
    runs it on everything the server sends); ``reply_arrays(request)`` names the exact
    arrays (length, dtype) a reply may carry, so a transport can refuse an announced size
    before allocating anything for it."""

    name: str
    request: type
    reply: type
    check: ReplyCheck | None = None
    reply_arrays: ReplyArrays | None = None
    check_request: RequestCheck | None = None


_KINDS: dict[str, MessageKind] = {}
_BY_CLASS: dict[type, MessageKind] = {}


def register_kind(
    name: str,
    request: type,
    reply: type,
    *,
    check: ReplyCheck | None = None,
    reply_arrays: ReplyArrays | None = None,
    check_request: RequestCheck | None = None,
) -> MessageKind:
    """Register a message kind (idempotent for the same classes)."""
    if not name.isidentifier():
        raise ConfigError(f"message kind {name!r} must be an identifier (letters, digits, _)")
    for cls in (request, reply):
        if not dataclasses.is_dataclass(cls) or "round" not in {
            f.name for f in dataclasses.fields(cls)
        }:
            raise ConfigError(f"{cls.__name__}: a message class is a dataclass with a round")
    if "site" not in {f.name for f in dataclasses.fields(reply)}:
        raise ConfigError(f"{reply.__name__}: a reply class needs a site field (its sender)")
    kind = MessageKind(name, request, reply, check, reply_arrays, check_request)
    old = _KINDS.get(name)
    if old is not None and (old.request, old.reply) != (request, reply):
        raise ConfigError(f"message kind {name!r} is already registered to other classes")
    _KINDS[name] = kind
    _BY_CLASS[request] = _BY_CLASS[reply] = kind
    return kind


def kind_named(name: str) -> MessageKind:
    kind = _KINDS.get(name)
    if kind is None:
        raise InvalidMessageError(f"unknown message kind {name[:64]!r}")
    return kind


def kind_of(message: Any) -> MessageKind:
    kind = _BY_CLASS.get(type(message))
    if kind is None:
        raise InvalidMessageError(f"{type(message).__name__} is not a registered message kind")
    return kind


def encode(message: Any) -> Payload:
    return to_payload(kind_of(message).name, message)


def decode(payload: Payload, *, reply: bool, site: str | None = None) -> Any:
    """The request (site side: checked by its kind's ``check_request``) or the reply (server
    side, ``site`` = the transport's identity; ``check_reply`` runs in the round's phase)."""
    kind = kind_named(payload.kind)
    message = from_payload(kind.reply if reply else kind.request, payload, site)
    if not reply and kind.check_request is not None:
        kind.check_request(message)
    return message


def check_reply(reply: Any, request: Any, site: str) -> Any:
    """Everything the server checks before using a reply: its class, its sender and round,
    then its kind's own rules."""
    kind = kind_of(request)
    if type(reply) is not kind.reply:
        raise InvalidMessageError(f"expected a {kind.name} reply, got {type(reply).__name__}")
    sender, round_ = getattr(reply, "site", None), getattr(reply, "round", None)
    if sender != site:
        raise InvalidMessageError(f"reply claims sender {sender!r} but came from {site!r}")
    if round_ != request.round:
        raise InvalidMessageError(f"reply for round {round_} arrived in round {request.round}")
    if kind.check is not None:
        kind.check(reply, request)
    return reply


# ---- fit and evaluate ------------------------------------------------------------------------


def check_examples_and_metrics(num_examples: Any, metrics: Any) -> None:
    if (
        not isinstance(num_examples, int)
        or isinstance(num_examples, bool)
        or not 0 <= num_examples <= MAX_EXAMPLES
    ):
        raise InvalidMessageError(f"num_examples must be a non-negative int, got {num_examples!r}")
    if len(metrics) > MAX_METRICS:
        raise InvalidMessageError(f"{len(metrics)} metrics exceed the limit of {MAX_METRICS}")
    for k, v in metrics.items():
        if not isinstance(k, str) or not k or len(k) > MAX_NAME_CHARS:
            raise InvalidMessageError(f"metric name {str(k)[:40]!r} is not allowed")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidMessageError(f"metric {k!r} must be a finite number, got {v!r}")


def _encoded(p: ClientPrivacy | None) -> bool:
    """Whether a round's instructions make the site send an integer encoding (uint64)."""
    facts = MODES.get(p.mode) if p is not None and isinstance(p.mode, str) else None
    return facts is not None and facts.encoded_updates


def update_dtype(request: FitIns) -> np.dtype:
    """The dtype a site's update must arrive in: the model's, uint64 under distributed DP,
    the ring's words under secure aggregation."""
    if request.secagg is not None:
        return ring_dtype(request.secagg.bits)
    if _encoded(request.privacy):
        return np.dtype(np.uint64)
    return np.dtype(request.weights.dtype)


def _check_update(d: Any, size: int, dtype: np.dtype, modulus_bits: int) -> None:
    if not isinstance(d, np.ndarray) or d.ndim != 1:
        raise InvalidMessageError("update must be a 1-D array")
    if d.shape[0] != size:
        raise InvalidMessageError(f"update has {d.shape[0]} values, the model has {size}")
    if modulus_bits:
        if d.dtype != np.uint64:
            raise InvalidMessageError(f"encoded update dtype {d.dtype} is not uint64")
        if d.size and int(d.max()) >= 1 << modulus_bits:
            raise InvalidMessageError(f"encoded update has values of {modulus_bits} bits or more")
        return
    if d.dtype != dtype:
        raise InvalidMessageError(f"update dtype {d.dtype} is not the model's {dtype}")
    if not all_finite(d):
        raise InvalidMessageError("update holds NaN or infinite values")


def _secure_length(request: FitIns) -> int:
    """A masked input's length: the model's, plus the weight coordinate unless the round's
    privacy mode sends ring elements already (distributed DP weighs every site equally)."""
    return int(request.weights.shape[0]) + (0 if _encoded(request.privacy) else 1)


def _check_masked(reply: FitRes, bits: int, length: int) -> None:
    """A masked input carries nothing but ring elements: no count, no metrics, no clip bit."""
    d, dtype = reply.delta, ring_dtype(bits)
    if not isinstance(d, np.ndarray) or d.ndim != 1 or d.dtype != dtype or d.shape[0] != length:
        raise InvalidMessageError(f"a masked input must be {length} values of {dtype}")
    if dtype == np.uint64 and d.size and int(d.max()) >> bits:
        raise InvalidMessageError(f"masked input has values of {bits} bits or more")
    if reply.num_examples or reply.metrics or reply.clip_bit is not None:
        raise InvalidMessageError("a masked input carries no example count, metrics or clip bit")


def _check_fit(reply: FitRes, request: FitIns) -> None:
    check_examples_and_metrics(reply.num_examples, reply.metrics)
    p = request.privacy
    bits = p.bits if p is not None and _encoded(p) else 0
    if request.secagg is not None:
        _check_masked(reply, request.secagg.bits, _secure_length(request))
    else:
        _check_update(reply.delta, request.weights.shape[0], request.weights.dtype, bits)
    if reply.clip_bit is not None and reply.clip_bit not in (-0.5, 0.5):
        raise InvalidMessageError(f"clip bit must be -0.5 or 0.5, got {reply.clip_bit!r}")
    sig = reply.signature or ""
    if len(sig) > MAX_SIGNATURE_CHARS or not _BASE64.issuperset(sig):
        raise InvalidMessageError(
            f"signature must be base64 of at most {MAX_SIGNATURE_CHARS} characters"
        )


def _check_fit_request(ins: FitIns) -> None:
    """What a site checks of the server's instructions before it trains on them."""
    if ins.seed < 0:
        raise InvalidMessageError(f"seed must be non-negative, got {ins.seed}")
    if ins.sites < 0:
        raise InvalidMessageError(f"sites must be non-negative, got {ins.sites}")
    if ins.job is not None and len(ins.job) > MAX_JOB_CHARS:
        raise InvalidMessageError(f"job id longer than {MAX_JOB_CHARS} characters")
    if ins.weights.ndim != 1 or ins.weights.dtype.kind != "f":
        raise InvalidMessageError(f"the model must be a 1-D float vector, got {ins.weights.dtype}")
    sa = ins.secagg
    if sa is not None and not 1 <= sa.bits <= 62:
        raise InvalidMessageError(f"secure aggregation bits {sa.bits} must be in 1..62")
    s = ins.settings
    if s.local_epochs < 1 or s.batch_size < 1:
        raise InvalidMessageError("local_epochs and batch_size must be at least 1")
    for name in ("lr", "momentum", "weight_decay", "proximal_mu", "dp_noise_multiplier"):
        if getattr(s, name) < 0:
            raise InvalidMessageError(f"training setting {name} must be >= 0")
    p = ins.privacy
    if p is None:
        return
    facts = MODES.get(p.mode) if isinstance(p.mode, str) else None
    if facts is None or not facts.client_instructions:
        raise InvalidMessageError(f"unknown privacy mode {str(p.mode)[:32]!r}")
    for name in ("clip_norm", "noise_multiplier", "sample_rate", "delta", "scale"):
        if getattr(p, name) < 0:
            raise InvalidMessageError(f"privacy setting {name} must be >= 0")
    if not 0 <= p.bits <= 62 or p.min_sites < 0:
        raise InvalidMessageError(f"privacy bits {p.bits} must be in 0..62, min_sites >= 0")


def _check_evaluate(reply: EvaluateRes, request: EvaluateIns) -> None:
    check_examples_and_metrics(reply.num_examples, reply.metrics)


def _reply_length(request: FitIns) -> int:
    return _secure_length(request) if request.secagg is not None else int(request.weights.shape[0])


FIT = register_kind(
    "fit",
    FitIns,
    FitRes,
    check=_check_fit,
    reply_arrays=lambda req: {"delta": (_reply_length(req), update_dtype(req))},
    check_request=_check_fit_request,
)
EVALUATE = register_kind(
    "evaluate", EvaluateIns, EvaluateRes, check=_check_evaluate, reply_arrays=lambda req: {}
)
