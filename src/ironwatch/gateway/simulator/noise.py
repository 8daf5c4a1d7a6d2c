"""Counter-based randomness: every random number is a hash of what it is for.

A shared random generator would make a reading depend on how the time was cut into reads (one
``history`` call or a thousand small ``read`` calls draw in a different order). Here each number is
a hash of ``(seed, stream, tick, sensor, metric)``, so the noise of a reading is fixed by the
reading itself: the same after a restart, in any chunking, in any order. The hash is the
SplitMix64 finaliser, computed on whole numpy arrays (uint64 arithmetic wraps by design).
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK16 = np.uint64(0xFFFF)
_MASK32 = np.uint64(0xFFFFFFFF)

# Streams keep unrelated uses of randomness apart (noise of a value never equals a delivery draw).
NOISE = 1
DELIVERY = 2
BURST = 3
SPIKE = 4
SPIKE_SIZE = 5
SLIP = 6


def mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of a uint64 array: a bijection that scatters every input bit."""
    z = x.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def key(seed: int, stream: int, counter: np.ndarray) -> np.ndarray:
    """Hashes of ``counter`` (any integer array) in the stream ``stream`` of ``seed``."""
    base = int(mix(np.array([(seed * 1_000_003 + stream) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0])
    c = counter.astype(np.int64).view(np.uint64)
    return mix(c * _GOLDEN + np.uint64(base))


def combine(keys: np.ndarray, counter: np.ndarray) -> np.ndarray:
    """Hashes of pairs: ``keys`` (from :func:`key`) joined with a second counter (broadcasting)."""
    c = counter.astype(np.int64).view(np.uint64)
    return mix(keys ^ (c * _GOLDEN + _GOLDEN))


def uniform(hashes: np.ndarray) -> np.ndarray:
    """Floats in [0, 1) from hashes (53 bits each)."""
    return (hashes >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def normal(hashes: np.ndarray) -> np.ndarray:
    """Nearly standard normal floats from hashes: the sum of four 16-bit uniforms, rescaled.

    The Irwin-Hall sum is bounded at about 3.5 standard deviations, which suits sensor noise (real
    outliers are the spike fault's job) and costs a few integer operations instead of a logarithm
    and a cosine.
    """
    total = (
        (hashes & _MASK16)
        + ((hashes >> np.uint64(16)) & _MASK16)
        + ((hashes >> np.uint64(32)) & _MASK16)
        + (hashes >> np.uint64(48))
    )
    # Each uniform has variance 1/12 of its range squared: four make 1/3, so scale by sqrt(3).
    z: np.ndarray = (total.astype(np.float64) * (1.0 / 65536.0) - 2.0) * 1.7320508075688772
    return z


def low32(hashes: np.ndarray) -> np.ndarray:
    """The low 32 bits of hashes as floats in [0, 1), for a second draw from the same hash."""
    return (hashes & _MASK32).astype(np.float64) * (1.0 / 4294967296.0)
