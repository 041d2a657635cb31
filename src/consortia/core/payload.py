"""A message's payload as transports carry it: named arrays and named scalars, nothing else.

Message classes are frozen dataclasses; ``to_payload`` flattens one into a ``Payload`` and
``from_payload`` rebuilds it, driven by the class's own type hints. Because every kind
travels through the same two dictionaries, a transport needs no code per kind: a new
message kind is a dataclass and a registration, not an edit to the wire format.

Field paths: a top-level field is its name (``weights``); a field of a nested dataclass is
``settings.lr``; an entry of a ``dict[str, scalar]`` field is ``metrics[accuracy]`` (the
key is everything between the first ``[`` and the final ``]``, so any text may be a key).
The ``round`` field travels in the message header and a reply's ``site`` is set by the
receiver from the transport's identity, never taken from the sender's words.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from consortia.core.errors import ConsortiaError

Scalar = bool | int | float | str
HEADER_FIELDS = ("round", "site")
# Field metadata key: a field the receiving side sets for itself and that never travels.
# Encoding leaves it out; decoding does not read it, so a payload carrying it is refused as
# carrying an unknown field (a server cannot set a site's debug switches).
SITE_LOCAL = "site_local"


def _travels(f: dataclasses.Field[Any]) -> bool:
    return not f.metadata.get(SITE_LOCAL, False)


class InvalidMessageError(ConsortiaError):
    """An incoming message failed validation; it is dropped and its sender marked failed."""


@dataclass(frozen=True)
class Payload:
    kind: str
    round: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    scalars: dict[str, Scalar] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays.values())


# ---- encoding -------------------------------------------------------------------------


def _flatten(value: Any, path: str, out: Payload) -> None:
    if value is None:
        return  # absent on the wire; decoding restores the field's default
    if isinstance(value, np.ndarray):
        out.arrays[path] = value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            if _travels(f):
                _flatten(getattr(value, f.name), f"{path}.{f.name}", out)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidMessageError(f"{path}: keys must be text, got {type(k).__name__}")
            out.scalars[f"{path}[{k}]"] = _scalar(v, f"{path}[{k}]")
    else:
        out.scalars[path] = _scalar(value, path)


def _scalar(value: Any, path: str) -> Scalar:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        return value
    raise InvalidMessageError(
        f"{path} is a {type(value).__name__}; messages carry arrays, bool, int, float, "
        "str, dicts of those and nested dataclasses"
    )


def to_payload(kind: str, message: Any) -> Payload:
    """Flatten a message dataclass (its header fields go in the header, not the body)."""
    out = Payload(kind, int(message.round))
    for f in dataclasses.fields(message):
        if f.name not in HEADER_FIELDS and _travels(f):
            _flatten(getattr(message, f.name), f.name, out)
    return out


# ---- decoding -------------------------------------------------------------------------


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        none_ok = len(args) < len(typing.get_args(tp))
        return (args[0] if len(args) == 1 else Union[tuple(args)]), none_ok  # noqa: UP007
    return tp, False


class _Reader:
    """Takes fields out of a payload, so that anything left over can be refused."""

    def __init__(self, payload: Payload) -> None:
        self.arrays = dict(payload.arrays)
        self.scalars = dict(payload.scalars)

    def build(self, cls: type, prefix: str) -> Any:
        values: dict[str, Any] = {}
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            if (not prefix and f.name in HEADER_FIELDS) or not _travels(f):
                continue
            path = f"{prefix}{f.name}"
            value = self.field(hints[f.name], path)
            if value is _MISSING:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise InvalidMessageError(f"{path} is missing")
                continue
            values[f.name] = value
        return values

    def field(self, tp: Any, path: str) -> Any:
        tp, none_ok = _optional(tp)
        origin = typing.get_origin(tp)
        if tp is np.ndarray:
            return self.arrays.pop(path, _MISSING)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if not any(k.startswith(path + ".") for k in (*self.arrays, *self.scalars)):
                return None if none_ok else _MISSING
            return tp(**self.build(tp, path + "."))
        if origin is dict or tp is dict:
            start = path + "["
            keys = [k for k in self.scalars if k.startswith(start) and k.endswith("]")]
            if not keys:  # an empty dict sends nothing: it comes back empty (or the default)
                return _MISSING if none_ok else {}
            value_type = (typing.get_args(tp) or (str, Any))[1]
            return {k[len(start) : -1]: _checked(self.scalars.pop(k), value_type, k) for k in keys}
        if path not in self.scalars:
            return _MISSING
        return _checked(self.scalars.pop(path), tp, path)


_MISSING = object()


def _checked(value: Scalar, tp: Any, path: str) -> Scalar:
    """The value if it has the declared type (an int where a float is declared is widened)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidMessageError(f"{path} is not finite ({value})")
    if tp is Any or tp is object:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    allowed = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    if isinstance(value, bool) and bool not in allowed:
        raise InvalidMessageError(f"{path} must be {_name(tp)}, got a flag")
    if not isinstance(value, allowed):
        raise InvalidMessageError(f"{path} must be {_name(tp)}, got {type(value).__name__}")
    return value


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def from_payload(cls: type, payload: Payload, site: str | None = None) -> Any:
    """Rebuild a message of class ``cls``; refuse missing, mistyped or unknown fields.

    ``site`` fills a reply's sender field: the transport's identity of the peer.
    """
    reader = _Reader(payload)
    values = reader.build(cls, "")
    names = {f.name for f in dataclasses.fields(cls)}
    if "round" in names:
        values["round"] = int(payload.round)
    if "site" in names:
        if site is None:
            raise InvalidMessageError(f"a {cls.__name__} needs its sender's identity")
        values["site"] = site
    left = sorted([*reader.arrays, *reader.scalars])
    if left:
        shown = ", ".join(repr(k[:64]) for k in left[:5])
        raise InvalidMessageError(f"{payload.kind} message has unknown fields: {shown}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise InvalidMessageError(f"{payload.kind} message: {exc}") from None
