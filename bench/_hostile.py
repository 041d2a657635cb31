"""Hostile site messages: Hypothesis strategies over the protocol's messages, byte-level
mutations of real frames, and how many refusals a server should log for a sequence of them.

Shared by the live hostile-message test (tests/deploy/test_hostile_process.py) and the
fuzz benchmark (bench/_chaos_fuzz.py), so both attack the server with the same messages.
Everything here builds bytes; nothing sends them.
"""

from __future__ import annotations

import random
from collections.abc import Collection

from google.protobuf.message import DecodeError
from hypothesis import strategies as st

from consortia.fleet.grpc import codec
from consortia.fleet.grpc import federation_pb2 as pb


def _reply(
    b: pb.Binding, v: pb.ArrayInfo, body: str, n: int, m: dict[str, float]
) -> pb.SiteMessage:
    reply = pb.Reply(binding=b)
    if body == "payload":
        scalars = {"num_examples": pb.Scalar(integer=n)}
        scalars.update({f"metrics[{k}]": pb.Scalar(number=x) for k, x in m.items()})
        reply.payload.CopyFrom(pb.Payload(scalars=scalars, arrays=[v]))
    elif body == "empty payload":
        reply.payload.CopyFrom(pb.Payload())
    elif body == "error":
        reply.error.reason = "x" * 10
    return pb.SiteMessage(reply=reply)


def hostile_messages(job_id: str) -> st.SearchStrategy[bytes]:
    """Serialized site messages that an enrolled site might send after its hello: replies
    with stale, future, absurd or invented bindings and payloads, stray chunks, second
    hellos, empty messages, and plain garbage bytes."""
    ids = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, 2, 3])
    binding = st.builds(
        pb.Binding,
        job_id=st.sampled_from([job_id, "other-job", ""]),
        round=st.integers(0, 6) | st.just(2**64 - 1),  # stale, current, future, absurd
        kind=st.sampled_from(["fit", "evaluate", "nonsense", ""]),
        request_id=ids,
    )
    vector = st.builds(
        pb.ArrayInfo,
        name=st.sampled_from(["delta", "weights", "", "x" * 300]),
        length=st.sampled_from([0, 6, 7, 2**40, 2**64 - 1]),
        dtype=st.integers(0, 7),
        num_chunks=st.integers(0, 2**32 - 1),
    )
    metrics = st.dictionaries(
        st.text(max_size=4), st.sampled_from([0.5, float("nan"), float("-inf")]), max_size=3
    )
    body = st.sampled_from(["payload", "empty payload", "error", "none"])
    reply = st.builds(
        _reply, binding, vector, body, st.sampled_from([0, 3, 2**63 - 1, -1]), metrics
    )
    chunk = st.builds(
        lambda rid, i, data: pb.SiteMessage(chunk=pb.Chunk(request_id=rid, index=i, data=data)),
        ids,
        st.integers(0, 3),
        st.binary(max_size=64),
    )
    hello = st.builds(
        lambda name: pb.SiteMessage(
            hello=pb.Hello(site_name=name, protocol_version=codec.PROTOCOL_VERSION)
        ),
        st.sampled_from(["site-a", "hostile", "../etc"]),
    )
    structured = (reply | chunk | hello | st.just(pb.SiteMessage())).map(
        lambda m: m.SerializeToString()
    )
    return structured | st.binary(min_size=1, max_size=200)  # garbage bytes


def expected_refusals(sent: list[bytes], accepted: Collection[int] = ()) -> int:
    """One logged refusal per message of ``sent`` (everything the site sent on its stream,
    in order), except heartbeats (harmless), the replies at the positions in ``accepted``
    (the site's own answers to requests still open, which the server takes) and the chunks
    that follow a refused reply with its request id (dropped quietly as part of that reply).

    The site's own answers belong in ``sent`` even when they are not hostile: the server
    remembers the request id of the last reply it refused, and a refused answer (one whose
    request a hostile reply had already closed) makes it drop the chunks with that id that
    come next, such as the next round's mutations of the frames of that very request. An
    accepted answer leaves that memory as it was.
    """
    n, skip = 0, None
    for i, data in enumerate(sent):
        try:
            msg = pb.SiteMessage.FromString(data)
        except DecodeError:
            n += 1
            continue
        kind = msg.WhichOneof("kind")
        if i in accepted:
            if kind != "reply":
                raise ValueError(f"message {i} is a {kind or 'empty'} message, not a reply")
            continue
        if kind == "reply":
            skip = msg.reply.binding.request_id
        if kind == "heartbeat" or (kind == "chunk" and msg.chunk.request_id == skip):
            continue
        n += 1
    return n


def would_be_welcomed(data: bytes, site: str) -> bool:
    """Whether ``data``, as the first message of a stream from ``site``'s certificate, is
    a hello the server would accept (it would then replace that site's live session, which
    the certificate's holder may do: that is reconnecting, not an attack)."""
    try:
        msg = pb.SiteMessage.FromString(data)
    except DecodeError:
        return False
    return (
        msg.WhichOneof("kind") == "hello"
        and msg.hello.protocol_version == codec.PROTOCOL_VERSION
        and msg.hello.site_name in ("", site)
    )


# ---- byte-level mutations of real frames -------------------------------------------------


def _bit_flips(frame: bytes, rng: random.Random) -> bytes:
    out = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncation(frame: bytes, rng: random.Random) -> bytes:
    return frame[: rng.randrange(len(frame))]


def _splice(frame: bytes, other: bytes, rng: random.Random) -> bytes:
    return frame[: rng.randrange(len(frame) + 1)] + other[rng.randrange(len(other)) :]


def _length_corruption(frame: bytes, rng: random.Random) -> bytes:
    """Overwrite one byte that protobuf may read as a length or varint (the byte after a
    length-delimited tag, or any byte with its continuation bit set) with an extreme one."""
    spots = [i + 1 for i in range(len(frame) - 1) if frame[i] & 0x07 == 2] or [0]
    spots += [i for i, b in enumerate(frame) if b & 0x80]
    out = bytearray(frame)
    i = rng.choice(spots) % len(out)
    out[i] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF])
    if rng.random() < 0.3:  # a varint that never ends
        out[i:] = b"\xff" * (len(out) - i)
    return bytes(out)


MUTATIONS = ("bit_flip", "truncation", "splice", "length")


def mutate(frames: list[bytes], rng: random.Random) -> tuple[str, bytes]:
    """One mutation of one of ``frames`` (real serialized site messages): its name and the
    mutated bytes. Never returns empty bytes (an empty message is a valid empty
    SiteMessage, which the Hypothesis strategy already sends)."""
    frame = rng.choice(frames)
    how = rng.choice(MUTATIONS)
    if how == "bit_flip":
        out = _bit_flips(frame, rng)
    elif how == "truncation":
        out = _truncation(frame, rng)
    elif how == "splice":
        out = _splice(frame, rng.choice(frames), rng)
    else:
        out = _length_corruption(frame, rng)
    return how, out or frame[:1]
