"""ML-KEM key generation from a 64-byte seed (FIPS 203 `ML-KEM.KeyGen_internal`).

Identity keys are stored as seeds `d || z`. pyca/cryptography takes a seed directly,
but PQClean (the `pqcrypto` backend) and liboqs' older APIs only take the expanded
decapsulation key `dk_PKE || ek || H(ek) || z`. This module computes that key from the
seed, once when an identity key is loaded (a few milliseconds in Python). It is checked
against the C2SP known-answer vector and against pyca/cryptography and kyber-py for
random seeds (tests/tunneld/test_kem.py); nothing here handles secrets per handshake.
"""

from __future__ import annotations

import hashlib

Q = 3329
N = 256
ETA1 = 2  # ML-KEM-768 and -1024 (only ML-KEM-512 uses 3)
K_BY_ALG = {"ml-kem-768": 3, "ml-kem-1024": 4}


def _bitrev7(i: int) -> int:
    return int(f"{i:07b}"[::-1], 2)


ZETAS = [pow(17, _bitrev7(i), Q) for i in range(128)]
GAMMAS = [pow(17, 2 * _bitrev7(i) + 1, Q) for i in range(128)]

Poly = list[int]


def ntt(f: Poly) -> Poly:
    """FIPS 203 Algorithm 9."""
    a = list(f)
    i = 1
    length = 128
    while length >= 2:
        for start in range(0, N, 2 * length):
            zeta = ZETAS[i]
            i += 1
            for j in range(start, start + length):
                t = zeta * a[j + length] % Q
                a[j + length] = (a[j] - t) % Q
                a[j] = (a[j] + t) % Q
        length //= 2
    return a


def multiply_ntts(f: Poly, g: Poly) -> Poly:
    """FIPS 203 Algorithms 11 and 12 (products of degree-one residues)."""
    h = [0] * N
    for i in range(128):
        a0, a1, b0, b1 = f[2 * i], f[2 * i + 1], g[2 * i], g[2 * i + 1]
        h[2 * i] = (a0 * b0 + a1 * b1 * GAMMAS[i]) % Q
        h[2 * i + 1] = (a0 * b1 + a1 * b0) % Q
    return h


def sample_ntt(seed: bytes) -> Poly:
    """FIPS 203 Algorithm 7: rejection sampling from SHAKE128(rho || j || i)."""
    want = 3 * 280  # enough for almost every seed; read more when not
    while True:
        stream = hashlib.shake_128(seed).digest(want)
        out: Poly = []
        for pos in range(0, want - 2, 3):
            c0, c1, c2 = stream[pos], stream[pos + 1], stream[pos + 2]
            d1 = c0 + 256 * (c1 % 16)
            d2 = c1 // 16 + 16 * c2
            if d1 < Q:
                out.append(d1)
            if d2 < Q and len(out) < N:
                out.append(d2)
            if len(out) == N:
                return out
        want *= 2


def sample_cbd(data: bytes, eta: int) -> Poly:
    """FIPS 203 Algorithm 8."""
    bits = [(data[i // 8] >> (i % 8)) & 1 for i in range(8 * len(data))]
    f = [0] * N
    for i in range(N):
        x = sum(bits[2 * i * eta + j] for j in range(eta))
        y = sum(bits[2 * i * eta + eta + j] for j in range(eta))
        f[i] = (x - y) % Q
    return f


def byte_encode12(f: Poly) -> bytes:
    out = bytearray()
    for i in range(0, N, 2):
        a, b = f[i], f[i + 1]
        out += bytes((a & 0xFF, (a >> 8) | ((b & 0x0F) << 4), b >> 4))
    return bytes(out)


def keygen(alg: str, seed: bytes) -> tuple[bytes, bytes]:
    """(ek, dk) of ML-KEM-768 or -1024 for the 64-byte seed d || z (FIPS 203 Alg. 16)."""
    k = K_BY_ALG[alg]
    if len(seed) != 64:
        raise ValueError(f"{alg} seed must be 64 bytes")
    d, z = seed[:32], seed[32:]
    g = hashlib.sha3_512(d + bytes([k])).digest()
    rho, sigma = g[:32], g[32:]

    def prf(n: int) -> bytes:
        return hashlib.shake_256(sigma + bytes([n])).digest(64 * ETA1)

    s_hat = [ntt(sample_cbd(prf(i), ETA1)) for i in range(k)]
    e_hat = [ntt(sample_cbd(prf(k + i), ETA1)) for i in range(k)]
    t_hat = []
    for i in range(k):
        acc = list(e_hat[i])
        for j in range(k):
            prod = multiply_ntts(sample_ntt(rho + bytes([j, i])), s_hat[j])
            acc = [(x + y) % Q for x, y in zip(acc, prod, strict=True)]
        t_hat.append(acc)
    ek = b"".join(byte_encode12(p) for p in t_hat) + rho
    dk_pke = b"".join(byte_encode12(p) for p in s_hat)
    dk = dk_pke + ek + hashlib.sha3_256(ek).digest() + z
    return ek, dk
