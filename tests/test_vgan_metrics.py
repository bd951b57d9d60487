"""plugins/vgan/metrics.py: the linear probe, the Fréchet distance, class coverage, the semi-supervised
classifier and the optional Inception path, on synthetic data with known answers."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from app.api import UserError
from plugins.vgan import metrics as M

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n: int, classes: int, dim: int, separation: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, dim, generator=g) * separation
    return centres[labels] + torch.randn(n, dim, generator=g), labels


def _colour_images(n: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images whose class is their mean brightness (a small CNN learns it in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    base = (labels.float() / (classes - 1) * 200 + 20).view(n, 1, 1, 1)
    noise = torch.randint(-20, 20, (n, 3, 16, 16), generator=g).float()
    return (base + noise).clamp(0, 255).to(torch.uint8), labels


# -- linear probe -------------------------------------------------------------------------------------------


def test_probe_separates_separable_features_and_is_at_chance_on_random_labels():
    # features_fn receives the "images" as given (here, feature vectors) and returns φ.
    x, y = _blobs(1200, 4, 8, separation=8.0, seed=0)
    assert M.linear_probe_error(lambda f: f, x[:600], y[:600], x[600:], y[600:]) <= 0.01
    x = torch.randn(3000, 20, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (3000,), generator=torch.Generator().manual_seed(2))
    error = M.linear_probe_error(lambda f: f, x[:500], y[:500], x[500:], y[500:], num_classes=10)
    assert 0.84 <= error <= 0.96  # chance is 0.9


def test_probe_is_deterministic_scale_free_and_reads_uint8_images():
    x, y = _blobs(600, 3, 6, separation=1.5, seed=3)  # overlapping: the error is neither 0 nor chance
    first = M.linear_probe_error(lambda f: f, x[:300], y[:300], x[300:], y[300:])
    assert 0.0 < first < 0.5
    assert M.linear_probe_error(lambda f: f, x[:300], y[:300], x[300:], y[300:]) == first
    # Standardisation: rescaling one feature by 1000 changes nothing but rounding.
    scale = torch.ones(6)
    scale[0] = 1000.0
    assert M.linear_probe_error(lambda f: f * scale, x[:300], y[:300], x[300:], y[300:]) == pytest.approx(first,
                                                                                                      abs=0.01)
    images, labels = _colour_images(400, 5, seed=4)
    seen = []

    def flat(batch: torch.Tensor) -> torch.Tensor:
        seen.append((batch.dtype, float(batch.min()), float(batch.max())))
        return batch.mean((2, 3))

    assert M.linear_probe_error(flat, images[:200], labels[:200], images[200:], labels[200:]) <= 0.02
    assert all(dtype == torch.float32 and 0.0 <= lo and hi <= 1.0 for dtype, lo, hi in seen)


# -- Fréchet distance ---------------------------------------------------------------------------------------


def test_frechet_of_identical_and_shifted_sets():
    a = torch.randn(1000, 32, generator=torch.Generator().manual_seed(0))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = torch.linspace(-1, 2, 32)
    assert M.frechet_distance(a, a + shift) == pytest.approx(float(shift.square().sum()), rel=1e-6)
    assert M.frechet_distance(a.numpy(), (a + shift).numpy()) == pytest.approx(M.frechet_distance(a, a + shift))


def _with_moments(mean: torch.Tensor, std: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n samples whose sample mean is ``mean`` and sample covariance (N − 1) is exactly diag(std²)."""
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(0))  # orthonormal columns, each orthogonal to the ones vector
    return q * (n - 1) ** 0.5 * std + mean


def test_frechet_matches_the_closed_form_for_diagonal_covariances():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0, 0.0],
                                                                                      dtype=torch.float64)
    s1, s2 = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64), torch.tensor([2.0, 2.0, 1.5, 0.1],
                                                                                    dtype=torch.float64)
    a, b = _with_moments(mu1, s1, 500, seed=0), _with_moments(mu2, s2, 300, seed=1)
    mean, cov = M.gaussian_stats(a)
    assert torch.allclose(mean, mu1) and torch.allclose(cov, torch.diag(s1.square()), atol=1e-10)
    expected = float((mu1 - mu2).square().sum() + (s1 - s2).square().sum())
    assert M.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert M.frechet_distance(b, a) == pytest.approx(expected, rel=1e-9)


def test_frechet_handles_singular_covariances_and_agrees_with_scipy():
    few = torch.randn(10, 50, generator=torch.Generator().manual_seed(0))  # rank 9 covariance in 50-d
    assert M.frechet_distance(few, few) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(few, few + 0.5) == pytest.approx(50 * 0.25, rel=1e-5)
    constant = torch.zeros(20, 3)  # zero covariance: the distance is the squared mean gap plus tr Σ
    other = _with_moments(torch.ones(3, dtype=torch.float64), torch.full((3,), 2.0, dtype=torch.float64), 20, 2)
    assert M.frechet_distance(constant, other) == pytest.approx(3 + 3 * 4.0, rel=1e-9)
    linalg = pytest.importorskip("scipy.linalg")
    import numpy as np

    g = torch.Generator().manual_seed(3)
    a = torch.randn(400, 6, generator=g, dtype=torch.float64)
    b = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g,
                                                                            dtype=torch.float64) + 1
    m1, c1 = a.mean(0).numpy(), np.cov(a.numpy(), rowvar=False)
    m2, c2 = b.mean(0).numpy(), np.cov(b.numpy(), rowvar=False)
    reference = ((m1 - m2) ** 2).sum() + np.trace(c1 + c2) - 2 * np.trace(linalg.sqrtm(c1 @ c2).real)
    assert M.frechet_distance(a, b) == pytest.approx(float(reference), rel=1e-8)


def test_frechet_refuses_mismatched_or_too_small_sets():
    with pytest.raises(ValueError, match="dimension"):
        M.frechet_distance(torch.randn(10, 4), torch.randn(10, 5))
    with pytest.raises(ValueError, match="at least 2"):
        M.frechet_distance(torch.randn(1, 4), torch.randn(10, 4))


# -- classes among samples ----------------------------------------------------------------------------------


def test_class_histogram_counts_the_argmax():
    images, labels = _colour_images(300, 5, seed=0)

    def oracle(x: torch.Tensor) -> torch.Tensor:  # reads the class back from the brightness
        level = ((x.mean((1, 2, 3)) * 255 - 20) / 200 * 4).round().clamp(0, 4).long()
        return torch.nn.functional.one_hot(level, 7).float()

    hist = M.class_histogram(oracle, images, num_classes=7, batch_size=64)
    assert hist.dtype == torch.int64 and hist.tolist() == torch.bincount(labels, minlength=7).tolist()
    assert M.class_histogram(oracle, images[:0], num_classes=7).tolist() == [0] * 7


def test_classes_covered_rule():
    assert M.MIN_CLASS_FRACTION == 0.01
    hist = [900, 10, 9, 30, 51, 0, 0, 0, 0, 0]  # 1,000 samples: 10 counts (1%), 9 does not
    assert M.classes_covered(hist) == 4
    assert M.classes_covered(torch.tensor(hist), min_fraction=0.05) == 2
    assert M.classes_covered([100] * 10) == 10
    assert M.classes_covered([0] * 10) == 0


# -- semi-supervised classifier -----------------------------------------------------------------------------


def _semi(augment=None, seed: int = 0, **kw):
    x, y = _colour_images(160, 4, seed=0)
    xv, yv = _colour_images(64, 4, seed=1)
    xt, yt = _colour_images(128, 4, seed=2)
    args = {"steps": 30, "batch_size": 16, "width": 8, "lr": 3e-3, "eval_every": 10, **kw}
    return M.semi_supervised_error(x, y, xt, yt, augment=augment, val_images=xv, val_labels=yv, seed=seed, **args)


def test_semi_supervised_learns_and_selects_on_validation():
    before = torch.get_rng_state()
    result = _semi()
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    assert result.test_error < 0.2  # chance is 0.75
    assert [s for s, _ in result.val_errors] == [10, 20, 30]
    best = min(e for _, e in result.val_errors)
    assert result.best_step == next(s for s, e in result.val_errors if e == best)
    no_val = M.semi_supervised_error(*_colour_images(160, 4, 0), *_colour_images(128, 4, 2), steps=5,
                                     batch_size=16, width=8)
    assert no_val.val_errors == [] and no_val.best_step == 5


def test_semi_supervised_is_deterministic_per_seed_with_and_without_augmentation():
    calls = []

    def jitter(x: torch.Tensor) -> torch.Tensor:  # a toy stochastic "transition" on the global RNG
        calls.append((torch.is_grad_enabled(), x.dtype, float(x.min()), float(x.max()), len(x)))
        return (x + 0.05 * torch.randn_like(x)).clamp(0, 1)

    plain, plain_again = _semi(), _semi()
    assert plain == plain_again
    augmented = _semi(jitter)
    assert len(calls) == 30 and all(not grad and dtype == torch.float32 and lo >= 0 and hi <= 1 and n == 16
                                    for grad, dtype, lo, hi, n in calls)
    assert _semi(jitter) == augmented
    assert augmented.last_loss != plain.last_loss  # the augmentation changes training
    assert _semi(seed=1).last_loss != plain.last_loss


# -- Inception FID/KID: optional, never downloads ----------------------------------------------------------

HAVE_TORCHMETRICS = (importlib.util.find_spec("torchmetrics") is not None
                     and importlib.util.find_spec("torch_fidelity") is not None)


def test_inception_metrics_needs_local_weights(tmp_path):
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    with pytest.raises(UserError, match="weights_path"):
        M.inception_metrics(images, images, None)
    with pytest.raises(UserError, match="no file at"):
        M.inception_metrics(images, images, tmp_path / "missing.pth")


@pytest.mark.skipif(HAVE_TORCHMETRICS, reason="torchmetrics and torch-fidelity are installed")
def test_inception_metrics_says_what_to_install(tmp_path):
    weights = tmp_path / "weights-inception.pth"
    weights.write_bytes(b"not read")
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    with pytest.raises(UserError, match=r"pip install 'torchmetrics\[image\]'"):
        M.inception_metrics(images, images, weights)


@pytest.mark.skipif(not HAVE_TORCHMETRICS, reason="needs torchmetrics and torch-fidelity")
def test_inception_metrics_through_torchmetrics(tmp_path, monkeypatch):
    class Tiny(torch.nn.Module):  # stands in for Inception: uint8 N×3×H×W → N×12 features
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 2).flatten(1)

    monkeypatch.setattr(M, "_inception_extractor", lambda path: Tiny())
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"unused by the stand-in")
    g = torch.Generator().manual_seed(0)
    real = torch.randint(0, 200, (60, 3, 16, 16), generator=g, dtype=torch.uint8)
    fake = torch.randint(55, 255, (60, 1, 16, 16), generator=g, dtype=torch.uint8)  # grey: repeated to RGB
    same = M.inception_metrics(real, real, weights, kid_subsets=5, kid_subset_size=50)
    diff = M.inception_metrics(real, fake, weights, kid_subsets=5, kid_subset_size=50)
    assert same["fid"] == pytest.approx(0.0, abs=1e-3) and diff["fid"] > same["fid"]
    assert diff["kid_mean"] > same["kid_mean"] and diff["kid_subset_size"] == 50
