"""Deterministic unit-vector data sets: the k-NN and bulk benchmarks' data, the HNSW
family the k-NN settings are chosen on, and the precomputed vectors that stand in for
CLIP's in the full-size synthetic catalogue."""

from __future__ import annotations

from dataclasses import dataclass


def unit_rows(x):
    import numpy as np

    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vectors(
    kind: str,
    n: int,
    dim: int,
    *,
    seed: int,
    clusters: int = 200,
    latent_dim: int = 32,
    spread: float = 0.5,
    noise: float = 0.35,
):
    """Deterministic unit vectors.

    latent:    `clusters` Gaussian clusters in a `latent_dim`-d space (centres N(0,1),
               `spread` around them), projected to `dim` by a fixed Gaussian matrix: low
               intrinsic dimension, closer to real embeddings.
    isotropic: `clusters` random unit centres in `dim` dimensions plus N(0, 1/dim)
               noise in every dimension (noise norm about equal to the centre's):
               points of one cluster are nearly equidistant, the hard case for HNSW.
    stress:    `clusters` centres N(0,1) in `dim` dimensions plus N(0, noise^2) in every
               dimension (issue 24's stress set: 200 clusters, noise 0.35): full intrinsic
               dimension inside each cluster.
    Points and queries of the same (kind, dim, seed) share the centres and projection.
    """
    import numpy as np

    shape_rng = np.random.default_rng(seed)
    rng = np.random.default_rng([seed, n, {"latent": 1, "isotropic": 2, "stress": 3}.get(kind, 0)])
    if kind == "latent":
        centres = shape_rng.normal(size=(clusters, latent_dim))
        proj = shape_rng.normal(size=(latent_dim, dim)) / np.sqrt(latent_dim)
        which = rng.integers(0, clusters, n)
        latent = centres[which] + spread * rng.normal(size=(n, latent_dim))
        return unit_rows(latent @ proj)
    if kind in ("isotropic", "stress"):
        if kind == "isotropic":
            centres, scale = unit_rows(shape_rng.normal(size=(clusters, dim))), 1 / np.sqrt(dim)
        else:
            centres, scale = shape_rng.normal(size=(clusters, dim)), noise
        which = rng.integers(0, clusters, n)
        out = np.empty((n, dim), dtype=np.float32)
        for lo in range(0, n, 20000):
            hi = min(n, lo + 20000)
            out[lo:hi] = centres[which[lo:hi]] + rng.normal(scale=scale, size=(hi - lo, dim))
        return unit_rows(out)
    raise ValueError(f"unknown vector set {kind!r}: latent, isotropic or stress")


@dataclass(frozen=True)
class Member:
    """One data set of the HNSW family: a generator and its shape parameters."""

    name: str
    kind: str
    clusters: int = 200
    latent_dim: int = 32
    spread: float = 0.5
    noise: float = 0.35
    description: str = ""

    def vectors(self, n: int, dim: int, *, seed: int):
        return vectors(
            self.kind,
            n,
            dim,
            seed=seed,
            clusters=self.clusters,
            latent_dim=self.latent_dim,
            spread=self.spread,
            noise=self.noise,
        )

    @property
    def latent(self) -> bool:
        return self.kind == "latent"


# The family the k-NN settings must hold on (BENCHMARKS.md "k-NN settings across a family of data sets").
FAMILY = {
    m.name: m
    for m in (
        Member("latent16", "latent", latent_dim=16, description="200 clusters, 16-d latent, spread 0.5"),
        Member("latent32", "latent", description="200 clusters, 32-d latent, spread 0.5 (the tuning set)"),
        Member("latent64", "latent", latent_dim=64, description="200 clusters, 64-d latent, spread 0.5"),
        Member(
            "latent32-many",
            "latent",
            clusters=2000,
            spread=0.3,
            description="2,000 tight clusters, 32-d latent, spread 0.3",
        ),
        Member(
            "latent64-wide",
            "latent",
            clusters=50,
            latent_dim=64,
            spread=1.0,
            description="50 wide clusters, 64-d latent, spread 1.0 (noise as large as the centres)",
        ),
        Member("isotropic", "isotropic", description="200 unit centres + N(0, 1/512) in every dimension"),
        Member("stress", "stress", description="issue 24: 200 clusters, N(0,1) centres, noise 0.35 per dimension"),
    )
}


def perturbed(data, n: int, *, seed: int, scale: float = 0.1):
    """`n` queries made from stored rows plus Gaussian noise of norm about `scale`, and the rows they came from."""
    import numpy as np

    rng = np.random.default_rng([seed, 7])
    rows = rng.choice(len(data), n, replace=False)
    noise = rng.normal(scale=scale / np.sqrt(data.shape[1]), size=(n, data.shape[1]))
    return unit_rows(data[rows] + noise), rows
