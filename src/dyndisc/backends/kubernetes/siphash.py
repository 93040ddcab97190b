"""The Kubernetes instance id: the reference runtime's 53-bit hash of a pod name.

The reference runtime hashes a worker's name with Rust's ``DefaultHasher`` (SipHash-1-3, both keys zero) over
the UTF-8 bytes followed by ``0xFF`` (how ``str`` implements ``Hash``), and masks the result to 53 bits so the
id survives JSON numbers read as float64. Reproducing it exactly lets a dyndisc frontend and a Dynamo worker
agree on ids.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1
#: Ids are masked to 53 bits: the largest integers a float64 (a JSON number) holds exactly.
ID_MASK = (1 << 53) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK64


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3 (one compression, three finalisation rounds) of ``data``, as an unsigned 64-bit int."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _MASK64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _MASK64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _MASK64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _MASK64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    length = len(data)
    whole = length - length % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        rounds(1)
        v0 ^= m
    # The last block holds the remaining bytes and the length's low byte in its top byte.
    last = int.from_bytes(data[whole:], "little") | ((length & 0xFF) << 56)
    v3 ^= last
    rounds(1)
    v0 ^= last
    v2 ^= 0xFF
    rounds(3)
    return (v0 ^ v1 ^ v2 ^ v3) & _MASK64


def instance_id_for(name: str) -> int:
    """The instance id of the worker whose ``DynamoWorkerMetadata`` (and pod) is called ``name``."""
    return siphash13(name.encode("utf-8") + b"\xff") & ID_MASK
