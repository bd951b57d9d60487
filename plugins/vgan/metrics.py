"""The paper's measures of a generator, offline and in plain torch (docs/vgan.md, "Measures, all offline").

- :func:`linear_probe_error`: Table 1, a linear classifier on a network's features φ(x).
- :func:`frechet_distance`: the Fréchet distance between Gaussians fitted to two feature sets (FID's
  formula, in whatever feature space the caller's extractor gives).
- :func:`class_histogram` / :func:`classes_covered`: which classes a classifier sees among samples.
- :func:`semi_supervised_error`: Table 2 in small, a CNN trained on few labels with and without the
  VCD transition as data augmentation (Eq. 11).
- :func:`inception_metrics`: Inception FID/KID through torchmetrics, only with local weights.

Feature extractors and classifiers are arguments (callables on float images in [0, 1]), so this
module depends on no other plugin. Images may be uint8 or float in [0, 1] throughout.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.api import UserError

Images = torch.Tensor
FeatureFn = Callable[[torch.Tensor], torch.Tensor]

MIN_CLASS_FRACTION = 0.01  # classes_covered: a class is present with ≥ 1% of the samples (10 of 1,000)


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → float in [0, 1]; float images unchanged (as float32)."""
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


@torch.no_grad()
def extract_features(features_fn: FeatureFn, images: Images, batch_size: int = 256) -> torch.Tensor:
    """``features_fn`` on ``images`` (uint8 or [0, 1]) in batches, without gradients: N×D float64 on the CPU.

    ``features_fn`` is called on float images in [0, 1] on the CPU; modules should be in eval mode.
    """
    out = []
    for chunk in images.split(batch_size):
        if len(chunk):
            features = features_fn(as_float_images(chunk))
            out.append((features.flatten(1) if features.dim() > 1 else features[:, None]).double().cpu())
    return torch.cat(out) if out else torch.empty(0, 0, dtype=torch.float64)


# -- Table 1: the linear probe ----------------------------------------------------------------------------


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, l2: float = 1e-3,
                     iterations: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (weights D×C, bias C) on ``features`` as given, by full-batch
    L-BFGS from zero for at most ``iterations`` iterations, loss mean CE + ``l2``/2·‖W‖²; deterministic."""
    x, y = features.double(), labels.long()
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + 0.5 * l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return weight.detach(), bias.detach()


def linear_probe_error(features_fn: FeatureFn, train_images: Images, train_labels: torch.Tensor,
                       test_images: Images, test_labels: torch.Tensor, *, num_classes: int | None = None,
                       l2: float = 1e-3, iterations: int = 200, batch_size: int = 256) -> float:
    """Test error of a linear classifier on φ(x) = ``features_fn(x)`` (the paper's Table 1).

    Features are standardised with the train features' mean and standard deviation (constant
    features become 0), then :func:`fit_linear_probe` fits the classifier on the train features.
    ``num_classes`` defaults to the largest label + 1.
    """
    train_x = extract_features(features_fn, train_images, batch_size)
    test_x = extract_features(features_fn, test_images, batch_size)
    train_y, test_y = train_labels.long().cpu(), test_labels.long().cpu()
    if num_classes is None:
        num_classes = int(max(train_y.max(), test_y.max())) + 1
    mean, std = train_x.mean(0), train_x.std(0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    weight, bias = fit_linear_probe((train_x - mean) / std, train_y, num_classes, l2=l2, iterations=iterations)
    predictions = (((test_x - mean) / std) @ weight + bias).argmax(1)
    return float((predictions != test_y).double().mean())


# -- the Fréchet distance ---------------------------------------------------------------------------------


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues,
    numerical noise of a near-singular matrix, are clipped to 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance_from_stats(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor,
                                cov2: torch.Tensor) -> float:
    """‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½, in float64.

    The cross term goes through symmetric eigendecompositions (no scipy, no complex square roots),
    so singular or near-singular covariances (fewer samples than dimensions) are handled.
    """
    mu1, cov1, mu2, cov2 = (t.double() for t in (mu1, cov1, mu2, cov2))
    root1 = _psd_sqrt(cov1)
    middle = root1 @ cov2 @ root1
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross
    return max(0.0, float(distance))  # ≥ 0 in exact arithmetic; rounding can give −1e-12


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (N − 1) of N×D features, in float64."""
    x = torch.as_tensor(features).double().reshape(len(features), -1)
    if len(x) < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {len(x)}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (len(x) - 1)


def frechet_distance(real_feats: torch.Tensor | np.ndarray, fake_feats: torch.Tensor | np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two N×D feature sets (FID's formula; which
    features — Inception's or another network's — is the caller's choice). Biased in N: compare
    distances computed with the same sample sizes."""
    real, fake = torch.as_tensor(real_feats), torch.as_tensor(fake_feats)
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"feature sets differ in dimension: {tuple(real.shape)} vs {tuple(fake.shape)}")
    return frechet_distance_from_stats(*gaussian_stats(real), *gaussian_stats(fake))


# -- classes among samples --------------------------------------------------------------------------------


@torch.no_grad()
def class_histogram(classifier_fn: FeatureFn, images: Images, num_classes: int,
                    batch_size: int = 256) -> torch.Tensor:
    """How many of ``images`` the classifier assigns (argmax of its logits) to each class: int64 counts."""
    logits = extract_features(classifier_fn, images, batch_size)
    if len(logits) == 0:
        return torch.zeros(num_classes, dtype=torch.int64)
    return torch.bincount(logits.argmax(1), minlength=num_classes)[:num_classes]


def classes_covered(hist: torch.Tensor | list[int], min_fraction: float = MIN_CLASS_FRACTION) -> int:
    """The number of classes present among the samples.

    Rule: a class is present when it receives at least ``min_fraction`` of all samples (default 1%:
    10 of 1,000, a tenth of the 10% a class gets from a balanced generator over 10 classes), so a few
    stray misclassifications do not count as a mode while a rare but real mode does.
    """
    counts = torch.as_tensor(hist, dtype=torch.float64)
    total = float(counts.sum())
    if total <= 0:
        return 0
    return int((counts >= min_fraction * total).sum())


# -- does a VCD transition keep the label? ----------------------------------------------------------------


@torch.no_grad()
def label_agreement(classifier_fn: FeatureFn, generator: Any, images: Images, steps: int, *, seed: int = 0,
                    batch_size: int = 250) -> dict[str, Any]:
    """How often the classifier gives a transition the label it gives the real image it came from.

    ``reconstruction``: the noise-free path Decode(Encode(x)); ``chain[t - 1]``: after ``t`` transitions of
    the Markov chain x → x̃ → x̃' … (step 1 is the one transition an augmented classifier sees). The
    reference is the classifier's own label for the real image, so its errors on real images do not count.
    Noise is drawn from a CPU generator seeded with ``seed``: the same chains on every run.
    """
    rng = torch.Generator().manual_seed(seed)
    was_training = generator.training
    generator.eval()
    agree_rec, agree = torch.zeros(()), torch.zeros(steps)
    n = 0
    for x in as_float_images(images).split(batch_size):
        label = classifier_fn(x).argmax(1)
        agree_rec += (classifier_fn(generator.reconstruct(x)).argmax(1) == label).sum()
        current = x
        for t in range(steps):
            current = generator.transition(current, rng)
            agree[t] += (classifier_fn(current).argmax(1) == label).sum()
        n += len(x)
    generator.train(was_training)
    if n == 0:
        raise ValueError("label_agreement needs at least one image")
    return {"reconstruction": float(agree_rec) / n, "chain": [float(a) / n for a in agree], "images": n}


# -- Table 2 in small: semi-supervised learning with VCD augmentation -------------------------------------


class SmallCNN(nn.Module):
    """The paper's semi-supervised classifier (``cond_net``) at CPU size: Gaussian input noise σ 0.1
    (training only), three stages of conv3×3-BN-ReLU (w, w | 2w, 2w | 2w) with 2×2 max-pooling and dropout
    0.5 between them, global average pooling and a linear layer to class logits. Takes images in [0, 1]."""

    def __init__(self, channels: int, num_classes: int, width: int = 32, noise_std: float = 0.1,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.noise_std = noise_std

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        w = width
        self.net = nn.Sequential(
            *block(channels, w), *block(w, w), nn.MaxPool2d(2), nn.Dropout(dropout),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2), nn.Dropout(dropout),
            *block(2 * w, 2 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 2 - 1
        if self.training and self.noise_std > 0:
            x = x + self.noise_std * torch.randn_like(x)
        return self.net(x)


@dataclass
class SemiSupervisedResult:
    """Test error of the selected model, the validation curve ``[(step, error)]``, the step chosen and
    the training loss of the last step."""

    test_error: float
    val_errors: list[tuple[int, float]] = field(default_factory=list)
    best_step: int = 0
    steps: int = 0
    last_loss: float = math.nan


@torch.no_grad()
def classifier_error(model: nn.Module, images: Images, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Error rate of ``model`` (put in eval mode) on ``images``."""
    model.eval()
    wrong = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        wrong += int((model(as_float_images(x)).argmax(1) != y.long()).sum())
    return wrong / max(1, len(labels))


def _lr_at(base: float, step: int, steps: int) -> float:
    """The learning-rate schedule: ``base``, ×0.1 at 60% and again at 90% of the steps."""
    return base * (0.1 if step >= 0.6 * steps else 1.0) * (0.1 if step >= 0.9 * steps else 1.0)


def semi_supervised_error(train_images: Images, train_labels: torch.Tensor, test_images: Images,
                          test_labels: torch.Tensor, *, augment: FeatureFn | None = None,
                          val_images: Images | None = None, val_labels: torch.Tensor | None = None,
                          steps: int = 1500, batch_size: int = 64, seed: int = 0, width: int = 32,
                          lr: float = 3e-3, eval_every: int = 0, num_classes: int | None = None
                          ) -> SemiSupervisedResult:
    """Train a :class:`SmallCNN` on the labelled images and return its test error (the paper's Table 2).

    Loss per step on a batch (x, y): CE(x, y) without ``augment``; with it, Eq. 11's
    0.5·CE(x, y) + 0.5·CE(x̃, y) where x̃ = ``augment(x)`` (e.g. a VCD transition of x in [0, 1]) is
    drawn fresh each step without gradients. Both settings use the same steps, batches, Adam
    schedule (``lr``, ×0.1 at 60% and 90%) and seed. Model selection never looks at the test set: with
    a validation set, the model is evaluated on it every ``eval_every`` steps (default steps/10) and at
    the end, and the best one (earliest on ties) is tested; without one, the last model is.
    Deterministic per ``seed`` (global RNG state is forked, so ``augment`` may use it).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    labels = train_labels.long().cpu()
    if num_classes is None:
        num_classes = int(max(labels.max(), test_labels.max())) + 1
    n, bs = len(train_images), min(batch_size, len(train_images))
    every = eval_every or max(1, steps // 10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        order_rng = torch.Generator().manual_seed(seed)
        model = SmallCNN(train_images.shape[1], num_classes, width)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        best_state, best_error, best_step = None, math.inf, 0
        val_errors: list[tuple[int, float]] = []
        order = torch.randperm(n, generator=order_rng)
        cursor = 0
        for step in range(steps):
            if cursor + bs > n:
                order, cursor = torch.randperm(n, generator=order_rng), 0
            idx = order[cursor:cursor + bs]
            cursor += bs
            x, y = as_float_images(train_images[idx]), labels[idx]
            model.train()
            if augment is None:
                loss = F.cross_entropy(model(x), y)
            else:
                with torch.no_grad():
                    x_aug = augment(x).detach().float()
                logits = model(torch.cat([x, x_aug]))
                loss = 0.5 * F.cross_entropy(logits[:bs], y) + 0.5 * F.cross_entropy(logits[bs:], y)
            for group in opt.param_groups:
                group["lr"] = _lr_at(lr, step, steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done = step + 1
            if val_images is not None and val_labels is not None and (done % every == 0 or done == steps):
                error = classifier_error(model, val_images, val_labels)
                val_errors.append((done, error))
                if error < best_error:
                    best_error, best_step, best_state = error, done, copy.deepcopy(model.state_dict())
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            best_step = steps
        return SemiSupervisedResult(classifier_error(model, test_images, test_labels), val_errors, best_step, steps,
                                    float(loss.detach()))


# -- Inception FID / KID (optional: torchmetrics + torch-fidelity and local weights) ----------------------

INSTALL_HINT = ("pip install 'torchmetrics[image]' (torchmetrics ≥ 1.3 with torch-fidelity); the studio does not "
                "depend on them")
WEIGHTS_HINT = ("a local copy of torch-fidelity's Inception weights (weights-inception-2015-12-05-6726825d.pth, "
                "from a torch-fidelity GitHub release); nothing is downloaded")


def _inception_extractor(weights_path: Path) -> nn.Module:
    """torchmetrics' Inception-v3 (pool3, 2048-d) with weights read from ``weights_path``."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    try:
        return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                  feature_extractor_weights_path=str(weights_path))
    except TypeError:  # a torchmetrics too old to take a weights path
        raise UserError(f"this torchmetrics cannot load local Inception weights; {INSTALL_HINT}") from None


def _uint8_rgb(images: Images) -> torch.Tensor:
    if images.dtype != torch.uint8:
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


def inception_metrics(real: Images, fake: Images, weights_path: str | Path | None, *, kid_subsets: int = 100,
                      kid_subset_size: int = 1000, batch_size: int = 100) -> dict[str, Any]:
    """Inception FID and KID (mean, std) of ``fake`` against ``real`` with torchmetrics'
    FrechetInceptionDistance / KernelInceptionDistance on Inception weights read from ``weights_path``.

    Never downloads: raises UserError when ``weights_path`` is not a file or torchmetrics/torch-fidelity
    is not installed. KID's subset size is capped at the smaller sample count.
    """
    if weights_path is None or not Path(weights_path).is_file():
        raise UserError(f"Inception FID/KID needs weights_path: {WEIGHTS_HINT}"
                        + (f" (no file at {weights_path})" if weights_path is not None else ""))
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except ImportError:
        raise UserError(f"Inception FID/KID needs torchmetrics and torch-fidelity: {INSTALL_HINT}") from None
    if not _TORCH_FIDELITY_AVAILABLE:
        raise UserError(f"Inception FID/KID needs torch-fidelity: {INSTALL_HINT}")
    extractor = _inception_extractor(Path(weights_path))
    subset = min(kid_subset_size, len(real), len(fake))
    fid = FrechetInceptionDistance(feature=extractor)
    kid = KernelInceptionDistance(feature=extractor, subsets=kid_subsets, subset_size=subset)
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for chunk in images.split(batch_size):
                chunk = _uint8_rgb(chunk)
                fid.update(chunk, real=is_real)
                kid.update(chunk, real=is_real)
        kid_mean, kid_std = kid.compute()
        return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
                "num_real": len(real), "num_fake": len(fake), "kid_subset_size": subset}
