"""Secure aggregation (SecAgg+, Bell et al. 2020): the server learns only the sum.

What is here so far is the pure-function core the protocol steps will use: fixed-point
encoding into Z_(2^b) (``encoding``), Shamir sharing over a prime field (``shamir``),
X25519 + HKDF pairwise keys (``keys``), ChaCha20 mask expansion and cancellation
(``masking``), AES-GCM share bundles bound to sender, receiver, job and round
(``channel``) and the neighbour graph with its degree bound (``neighbours``). Nothing here
sends a message or keeps protocol state.
"""
