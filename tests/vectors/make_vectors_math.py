"""Regenerate tests/vectors/shamir.json and tests/vectors/graph.json.

    python tests/vectors/make_vectors_math.py           # rewrite both files
    python tests/vectors/make_vectors_math.py --check   # exit 1 if the files differ from the code

The tests check the code against the committed files (and check the files against small
independent re-implementations of the documented algorithms), so a change in the byte-level
behaviour of Shamir sharing or of the Harary permutation shows up as a failing test.

Randomness for the Shamir vectors is a fixed SHAKE-256 stream per vector (label below); only the
bytes that ``split`` actually consumed are recorded, so another implementation can feed exactly
that stream to its own rejection sampler.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

from secagg import graph
from secagg.hazmat import shamir

HERE = Path(__file__).resolve().parent


class RecordingStream:
    """randbytes(n) over a fixed byte string, remembering how much was read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def __call__(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RuntimeError("vector stream exhausted")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    @property
    def consumed(self) -> bytes:
        return self.data[:self.pos]


def _shake(label: str, size: int = 4096) -> bytes:
    return hashlib.shake_256(b"secagg shamir test vector/" + label.encode()).digest(size)


def shamir_vectors() -> dict:
    all_ff = b"\xff" * shamir.SHARE_VALUE_BYTES  # >= 255*PRIME: rejected by the sampler
    cases = [
        ("t1-zero", bytes(32), 1, [1], b""),
        ("t2-rejection-first", b"\xff" * 32, 2, [1, 2, 3], all_ff),
        ("t3-counting", bytes(range(32)), 3, [1, 2, 5, 2**32 - 1], b""),
        ("t5-ids", _shake("secret-t5")[:32], 5, [i + 1 for i in (0, 7, 42, 1000, 65535, 2**32 - 2)], b""),
        ("t17-of-30", _shake("secret-t17")[:32], 17, list(range(1, 31)), b""),
        ("t4-of-4-unsorted", _shake("secret-t4")[:32], 4, [9, 3, 77, 12], all_ff + all_ff),
    ]
    vectors = []
    for label, secret, t, xs, prefix in cases:
        stream = RecordingStream(prefix + _shake(label))
        shares = shamir.split(secret, threshold=t, xs=xs, randbytes=stream)
        assert shamir.reconstruct(shares[:t], threshold=t) == secret
        vectors.append({
            "label": label,
            "secret": secret.hex(),
            "threshold": t,
            "xs": xs,
            "randbytes": stream.consumed.hex(),
            "shares": [s.to_bytes().hex() for s in shares],
        })
    return {
        "description": (
            "Shamir t-of-m over GF(p), p = 2**256 + 297 (secagg.hazmat.shamir). f(x) = s + a_1 x + ... "
            "+ a_{t-1} x^{t-1}, s = secret read big-endian. Coefficients a_1..a_{t-1} are drawn in order "
            "from 'randbytes': read 33 bytes big-endian as w; if w >= 255*p reject and read again; else "
            "a = w mod p. 'randbytes' is exactly the stream consumed. Share i is x_i (4 bytes big-endian) "
            "|| f(x_i) (33 bytes big-endian), in the order of 'xs'."),
        "prime": str(shamir.PRIME),
        "vectors": vectors,
    }


def graph_vectors() -> dict:
    cases = [
        ("zero-seed", bytes(32), list(range(10)), 4),
        ("counting-seed", bytes(range(1, 33)), list(range(10)), 2),
        ("sparse-ids", hashlib.sha256(b"secagg graph vector 3").digest(),
         [3, 17, 42, 1000, 2**32 - 2, 0, 5, 65536, 99, 12345, 7, 8], 6),
        ("n40-k8", hashlib.sha256(b"secagg graph vector 4").digest(), list(range(100, 140)), 8),
        ("complete-fallback", bytes(32), [1, 2, 3, 4, 5], 4),
    ]
    vectors = []
    for label, seed, ids, k in cases:
        g = graph.harary_graph(ids, k=k, seed=seed)
        key = hashlib.sha256(graph.PERMUTATION_DOMAIN + seed).digest()
        words = graph._keystream_words(seed)
        vectors.append({
            "label": label,
            "seed": seed.hex(),
            "ids": ids,
            "k": k,
            "chacha20_key": key.hex(),
            "first_keystream_words": [next(words) for _ in range(8)],
            "permutation": list(graph.harary_permutation(ids, seed=seed)),
            "complete": g.is_complete,
            "sorted_ids": list(g.ids),
            "neighbours": [list(g.neighbours(u)) for u in g.ids],
        })
    return {
        "description": (
            "SecAgg+ Harary graphs (secagg.graph). key = SHA-256(domain || seed), domain = "
            f"{graph.PERMUTATION_DOMAIN.decode()!r}; keystream = ChaCha20 (RFC 8439) with that key, block "
            "counter 0 and an all-zero 96-bit nonce, read as little-endian uint32 words. Permutation: "
            "a = sorted ids; for i = n-1 down to 1: m = i+1; draw words until w < 2**32 - (2**32 mod m); "
            "j = w mod m; swap a[i], a[j]. Neighbours of a[p] are a[p +- 1..k/2 mod n]; 'neighbours' lists "
            "them sorted, one list per id of 'sorted_ids'. k >= n-1 gives the complete graph (the "
            "permutation is still listed, but unused)."),
        "vectors": vectors,
    }


def _dump(obj: dict) -> str:
    """Indented JSON with every list of numbers on one line."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s+([-0-9,\s]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text) + "\n"


def main(argv: list[str]) -> int:
    outputs = {HERE / "shamir.json": _dump(shamir_vectors()), HERE / "graph.json": _dump(graph_vectors())}
    if "--check" in argv:
        stale = [p.name for p, text in outputs.items() if not p.exists() or p.read_text() != text]
        if stale:
            print("stale vector files:", ", ".join(stale))
            return 1
        return 0
    for path, text in outputs.items():
        path.write_text(text)
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
