"""Deterministic unit-vector data sets: the k-NN and bulk benchmarks' data, and the
precomputed vectors that stand in for CLIP's in the full-size synthetic catalogue."""

from __future__ import annotations


def unit_rows(x):
    import numpy as np

    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vectors(kind: str, n: int, dim: int, *, seed: int, clusters: int = 200, latent_dim: int = 32):
    """Deterministic unit vectors.

    latent:    `clusters` Gaussian clusters in a `latent_dim`-d space (centres N(0,1),
               spread 0.5), projected to `dim` by a fixed Gaussian matrix: low intrinsic
               dimension, closer to real embeddings.
    isotropic: `clusters` random unit centres in `dim` dimensions plus N(0, 1/dim)
               noise in every dimension (noise norm about equal to the centre's):
               points of one cluster are nearly equidistant, the hard case for HNSW.
    Points and queries of the same (kind, dim, seed) share the centres and projection.
    """
    import numpy as np

    shape_rng = np.random.default_rng(seed)
    rng = np.random.default_rng([seed, n, 1 if kind == "latent" else 2])
    if kind == "latent":
        centres = shape_rng.normal(size=(clusters, latent_dim))
        proj = shape_rng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim)
        which = rng.integers(0, clusters, n)
        latent = centres[which] + 0.5 * rng.normal(size=(n, latent_dim))
        return unit_rows(latent @ proj)
    if kind == "isotropic":
        centres = unit_rows(shape_rng.normal(size=(clusters, dim)))
        which = rng.integers(0, clusters, n)
        out = np.empty((n, dim), dtype=np.float32)
        for lo in range(0, n, 20000):
            hi = min(n, lo + 20000)
            out[lo:hi] = centres[which[lo:hi]] + rng.normal(scale=1 / np.sqrt(dim), size=(hi - lo, dim))
        return unit_rows(out)
    raise ValueError(f"unknown vector set {kind!r}: latent or isotropic")
