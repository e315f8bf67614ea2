"""Metrics against direct (scipy / naive-loop) computations, their known properties, and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from limner.evaluation import metrics
from limner.evaluation.metrics import (
    density_coverage,
    feature_stats,
    fid,
    frechet_distance,
    inception_score,
    kid,
    knn_distances,
    nearest,
    pairwise_sq_dists,
    precision_recall,
)


def gaussian(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) * scale + shift


def clusters(centers: np.ndarray, per_center: int, seed: int, spread: float = 0.3) -> np.ndarray:
    """Gaussian blobs around each row of centers [C, D] -> [C * per_center, D]."""
    rng = np.random.default_rng(seed)
    return np.concatenate([c + spread * rng.normal(size=(per_center, centers.shape[1])) for c in centers])


MODES = 10.0 * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # 4 separate 2-d modes


# ----------------------------------------------------------------------------------------------
# Naive references


def naive_kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    """k-th nearest other row's distance, one row at a time with a full sort."""
    return np.array([np.sort(np.linalg.norm(x - x[i], axis=1))[k] for i in range(len(x))])


def naive_inside_any(query: np.ndarray, centers: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return np.array([(np.linalg.norm(centers - q, axis=1) <= radii).sum() for q in query])


def naive_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda u, v: (float(u @ v) / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------------------------
# FID


def test_feature_stats_are_float64_and_unbiased():
    x = gaussian(50, 4, 0).astype(np.float32)
    mu, sigma = feature_stats(x)
    assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)


@pytest.mark.parametrize("n, d", [(300, 8), (200, 32)])
def test_fid_matches_scipy_sqrtm(n, d):
    a, b = gaussian(n, d, 1), gaussian(n + 17, d, 2, shift=0.3, scale=1.4)
    assert fid(a, b) == pytest.approx(scipy_fid(a, b), rel=1e-9)


def test_fid_with_singular_covariances_matches_scipy():
    a, b = gaussian(10, 32, 3), gaussian(12, 32, 4, shift=0.5)  # rank 9 and 11 in 32-d
    # scipy's sqrtm of a singular product loses ~1e-8 relative; ours is the tighter one.
    assert fid(a, b) == pytest.approx(scipy_fid(a, b), rel=1e-6)
    assert fid(a, b) > 0


def test_fid_of_identical_sets_is_zero_even_when_singular():
    for n, d in [(500, 16), (20, 64)]:
        a = gaussian(n, d, 5) * np.linspace(0.01, 10, d)  # wide eigenvalue spread
        assert 0.0 <= fid(a, a) <= 1e-10 * np.trace(np.cov(a, rowvar=False))


def test_fid_is_symmetric_and_nonnegative():
    a, b = gaussian(40, 64, 6), gaussian(30, 64, 7, scale=0.5)
    assert fid(a, b) == pytest.approx(fid(b, a), rel=1e-10)
    assert fid(a, b) >= 0


def test_frechet_distance_analytic_for_commuting_covariances():
    # Diagonal covariances commute: d² = ||Δμ||² + Σ (sqrt(s1) - sqrt(s2))².
    s1, s2 = np.array([1.0, 4.0, 0.0, 9.0]), np.array([4.0, 1.0, 0.0, 0.25])
    mu1, mu2 = np.zeros(4), np.array([1.0, -2.0, 0.5, 0.0])
    expected = (mu2**2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_fid_of_shifted_gaussian_is_the_squared_shift():
    rng = np.random.default_rng(8)
    A = rng.normal(size=(5, 5))
    cov_root = A / np.sqrt(5)  # some non-diagonal covariance A Aᵀ / 5
    shift = np.array([1.0, -1.0, 2.0, 0.0, 0.5])  # ||shift||² = 6.25
    a = rng.normal(size=(100_000, 5)) @ cov_root.T
    b = rng.normal(size=(100_000, 5)) @ cov_root.T + shift
    assert fid(a, b) == pytest.approx(shift @ shift, abs=0.05)


# ----------------------------------------------------------------------------------------------
# KID


def test_kid_matches_naive_unbiased_mmd():
    a, b = gaussian(30, 5, 9), gaussian(30, 5, 10, shift=0.4, scale=2.0)
    # subset_size clips to 30, so every subset is a permutation of the full sets.
    mean, std = kid(a, b, num_subsets=3, subset_size=1000)
    assert mean == pytest.approx(naive_mmd2(a, b), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-10)


def test_kid_subsets_are_drawn_from_the_larger_set():
    a, b = gaussian(40, 3, 11), gaussian(12, 3, 12, shift=1.0)
    mean, std = kid(a, b, num_subsets=20, subset_size=1000)  # 12 of a's 40 rows each time
    assert std > 0 and mean > 0


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    subsets, m, n = 50, 200, 2000
    a, b = gaussian(n, 16, 13), gaussian(n, 16, 14)
    mean, std = kid(a, b, num_subsets=subsets, subset_size=m)
    # Subsets share the same n samples, so the mean's error is not just std/sqrt(subsets): the
    # full-sample estimate's own spread (~ std * m / n under the null, MMD² ~ 1/m) adds to it.
    assert abs(mean) < 3 * std * np.sqrt(1 / subsets + (m / n) ** 2)
    mean_far, std_far = kid(a, gaussian(2000, 16, 15, shift=0.5), num_subsets=subsets, subset_size=200)
    assert mean_far > 10 * std_far / np.sqrt(subsets) and mean_far > 10 * abs(mean)


def test_kid_is_reproducible_by_seed():
    a, b = gaussian(100, 4, 16), gaussian(100, 4, 17, shift=0.2)
    run = lambda seed: kid(a, b, num_subsets=5, subset_size=30, seed=seed)  # noqa: E731
    assert run(3) == run(3) and run(3) != run(4)


# ----------------------------------------------------------------------------------------------
# Precision / recall, density / coverage


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_match_naive(k):
    real, fake = gaussian(60, 4, 18), gaussian(45, 4, 19, shift=0.7)
    p_naive = (naive_inside_any(fake, real, naive_kth_radius(real, k)) > 0).mean()
    r_naive = (naive_inside_any(real, fake, naive_kth_radius(fake, k)) > 0).mean()
    assert precision_recall(real, fake, k=k) == pytest.approx((p_naive, r_naive), abs=1e-12)
    assert 0 < p_naive < 1 and 0 < r_naive < 1  # the comparison is not trivially 0 or 1


def test_density_coverage_match_naive():
    real, fake, k = gaussian(60, 4, 20), gaussian(45, 4, 21, shift=0.5), 5
    radii = naive_kth_radius(real, k)
    density = naive_inside_any(fake, real, radii).sum() / (k * len(fake))
    coverage = np.mean([(np.linalg.norm(fake - r, axis=1) <= radii[i]).any() for i, r in enumerate(real)])
    assert density_coverage(real, fake, k=k) == pytest.approx((density, coverage), abs=1e-12)


def test_identical_sets_have_full_precision_recall_and_coverage():
    x = gaussian(200, 8, 22)
    assert precision_recall(x, x) == (1.0, 1.0)
    density, coverage = density_coverage(x, x)
    assert coverage == 1.0 and density >= 1.0 / 5  # each point at least sits in its own ball


def test_mode_collapse_drops_recall_and_coverage_not_precision():
    real = clusters(MODES, 100, 23)
    fake = clusters(MODES[:2], 200, 24)  # only 2 of the 4 modes
    precision, recall = precision_recall(real, fake)
    density, coverage = density_coverage(real, fake)
    assert precision > 0.9 and 0.4 < recall < 0.6
    assert density > 0.8 and 0.4 < coverage < 0.6


def test_off_manifold_samples_drop_precision_and_density_not_recall():
    real, good = clusters(MODES, 100, 25), clusters(MODES, 100, 27)
    far = np.random.default_rng(26).normal(size=(400, 2)) * 0.3 + 50.0
    fake = np.concatenate([good, far])  # half the samples off-manifold
    good_precision, good_recall = precision_recall(real, good)
    good_density, good_coverage = density_coverage(real, good)
    assert good_precision > 0.9 and good_recall > 0.9 and good_coverage > 0.9
    # The far half lies in no real ball and its own balls reach no real sample.
    assert precision_recall(real, fake) == pytest.approx((good_precision / 2, good_recall))
    assert density_coverage(real, fake) == pytest.approx((good_density / 2, good_coverage))


# ----------------------------------------------------------------------------------------------
# Inception Score


def scipy_is(logits: np.ndarray, splits: int) -> tuple[float, float]:
    p = scipy.special.softmax(logits, axis=1)
    scores = [np.exp(np.mean([scipy.stats.entropy(row, part.mean(0)) for row in part]))
              for part in np.array_split(p, splits)]
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_matches_scipy_entropy():
    logits = np.random.default_rng(28).normal(size=(103, 7)) * 3
    assert inception_score(logits, splits=4) == pytest.approx(scipy_is(logits, 4), rel=1e-10)


def test_inception_score_is_k_for_balanced_confident_and_one_for_constant():
    K, splits = 6, 5
    labels = np.tile(np.arange(K), splits * 4)  # every split holds each class 4 times
    confident = 200.0 * np.eye(K)[labels]
    mean, std = inception_score(confident, splits=splits)
    assert mean == pytest.approx(K, rel=1e-12) and std == pytest.approx(0, abs=1e-9)
    constant = np.tile(np.random.default_rng(29).normal(size=K), (len(labels), 1))
    assert inception_score(constant, splits=splits) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_inception_score_is_stable_for_huge_logits():
    logits = np.random.default_rng(30).normal(size=(50, 4)) * 1e4
    mean, std = inception_score(logits, splits=2)
    assert np.isfinite(mean) and np.isfinite(std) and 1.0 <= mean <= 4.0


# ----------------------------------------------------------------------------------------------
# Blocked distances


def dense_sq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def test_pairwise_sq_dists_blocks_equal_the_dense_matrix():
    a, b = gaussian(23, 5, 31), gaussian(11, 5, 32)
    blocks = list(pairwise_sq_dists(a, b, block=7))
    assert [start for start, _ in blocks] == [0, 7, 14, 21]
    np.testing.assert_allclose(np.concatenate([d for _, d in blocks]), dense_sq(a, b), rtol=1e-10, atol=1e-12)


def test_pairwise_sq_dists_shrinks_blocks_to_the_memory_budget(monkeypatch):
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 100)
    a, b = gaussian(30, 3, 33), gaussian(40, 3, 34)
    blocks = list(pairwise_sq_dists(a, b, block=1024))
    assert all(d.size <= 100 for _, d in blocks) and sum(len(d) for _, d in blocks) == 30
    np.testing.assert_allclose(np.concatenate([d for _, d in blocks]), dense_sq(a, b), rtol=1e-10, atol=1e-12)


def test_knn_distances_and_nearest_equal_dense_search():
    a, b = gaussian(37, 4, 35), gaussian(29, 4, 36)
    d = np.sqrt(dense_sq(a, b))
    np.testing.assert_allclose(knn_distances(a, b, 3, block=5), np.sort(d, axis=1)[:, 2], rtol=1e-12)
    dist, index = nearest(a, b, block=5)
    np.testing.assert_array_equal(index, d.argmin(axis=1))
    np.testing.assert_allclose(dist, d.min(axis=1), rtol=1e-12)
    own = knn_distances(b, b, 2, exclude_self=True, block=4)
    np.testing.assert_allclose(own, naive_kth_radius(b, 2), rtol=1e-12)


def test_knn_self_index_excludes_only_the_given_row_with_duplicates():
    ref = np.concatenate([gaussian(10, 3, 37), gaussian(1, 3, 37)])  # row 10 duplicates row 0
    rows = np.array([0, 3, 10])
    out = knn_distances(ref[rows], ref, 1, self_index=rows)
    assert out[0] == 0.0 and out[2] == 0.0 and out[1] > 0  # the duplicate still counts
    assert nearest(ref[:1], ref[1:])[0][0] == 0.0  # exact copies are exactly 0 (not ~1e-8)


# ----------------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize("call, message", [
    (lambda: fid(gaussian(1, 3, 0), gaussian(5, 3, 0)), "features_a has 1 row; FID needs at least 2"),
    (lambda: fid(gaussian(5, 3, 0), np.full((5, 3), np.nan)), "features_b contains NaN or Inf"),
    (lambda: fid(gaussian(5, 3, 0), gaussian(5, 4, 0)),
     "dimension mismatch: features_a has D=3, features_b has D=4"),
    (lambda: fid(np.zeros(5), gaussian(5, 3, 0)), "features_a must be a 2-d"),
    (lambda: kid(gaussian(5, 3, 0), np.array([[0, np.inf, 0]] * 5)), "features_b contains NaN or Inf"),
    (lambda: kid(gaussian(5, 3, 0), gaussian(5, 3, 0), subset_size=1), "subset_size"),
    (lambda: precision_recall(gaussian(3, 2, 0), gaussian(9, 2, 0), k=3),
     "real has 3 rows; k=3 needs at least"),
    (lambda: density_coverage(gaussian(9, 2, 0), gaussian(9, 3, 0)), "dimension mismatch: real"),
    (lambda: inception_score(gaussian(5, 3, 0), splits=10),
     "logits has 5 rows; the Inception Score needs at least 10"),
    (lambda: frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), "dimension mismatch: mu1"),
    (lambda: frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3)), "sigma1"),
    (lambda: knn_distances(gaussian(3, 2, 0), gaussian(3, 2, 0), 3, exclude_self=True),
     "k=3 needs 1 <= k <= 2"),
])
def test_invalid_inputs_raise_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        call()
