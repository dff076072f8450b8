"""Sample quality without downloads: the "digits score".

A small classifier (scikit-learn MLP) is trained on part of scikit-learn's
8x8 digits the first time it is needed (cached for the process). Generated
images are reduced to 8x8 by area averaging, mapped to the digits' 0..16
scale, and classified. Reported, in the spirit of the Inception Score
(Salimans et al. 2016) with this classifier in place of Inception:

- ``inception_score`` = exp(E_x[KL(p(y|x) || p(y))]), p(y) = E_x[p(y|x)]: high
  (at most 10) when each image is confidently one digit and all digits occur;
- ``confidence``: mean top-class probability;
- ``label_accuracy``: for class-conditional samples, how often the classifier
  agrees with the requested label (also per label);
- ``detail_rms``: RMS (in [-1, 1] units) of what the 8x8 reduction throws away.
  The classifier never sees it, so high-frequency noise can score well on the
  three numbers above; a ``detail_rms`` far above the real digits' flags that.
- ``frechet_distance``: the Frechet distance (as FID, Heusel et al. 2017, with this
  classifier's 128 hidden ReLU features in place of Inception's) between the images
  and the classifier's training split. Unlike the three scores above, which saturate
  once every image is a clear digit, it also sees variety and the shape of each class's
  distribution. It is biased upwards for few images: compare equal counts only.

``real_digits_reference`` gives the same numbers for the held-out real digits
(the ceiling), ``noise_reference`` for pure noise (the floor).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DigitsScore",
    "digits_classifier",
    "to_digit_features",
    "digits_score",
    "real_digits_reference",
    "noise_reference",
    "frechet_distance",
    "within_class_variety",
]

_SPLIT_SEED = 0
_TEST_FRACTION = 0.3


@dataclass(frozen=True)
class DigitsScore:
    n: int
    inception_score: float
    confidence: float
    label_accuracy: float | None = None
    per_label_accuracy: dict[int, float] | None = None
    class_frequencies: list[float] | None = None  # p(y), the mean prediction
    detail_rms: float | None = None
    frechet_distance: float | None = None  # to the real digits, in the classifier's features

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.per_label_accuracy is not None:
            d["per_label_accuracy"] = {str(k): v for k, v in self.per_label_accuracy.items()}
        return d


@functools.lru_cache(maxsize=1)
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    from ddpm_core.data import digits_arrays

    images, labels = digits_arrays()
    return train_test_split(
        images.reshape(len(images), 64),
        labels,
        test_size=_TEST_FRACTION,
        random_state=_SPLIT_SEED,
        stratify=labels,
    )


@functools.lru_cache(maxsize=1)
def digits_classifier():
    """An MLP (64-128-10) fitted on 70% of the digits (fixed split and seed; ~2 s, cached)."""
    from sklearn.neural_network import MLPClassifier

    x_train, _, y_train, _ = _split()
    clf = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-3, max_iter=600, random_state=0)
    clf.fit(x_train / 16.0, y_train)
    return clf


def to_digit_features(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, 64) on the digits' 0..16 scale: channel mean, then
    area averaging to 8x8 (box filter, the inverse of the upscaling used for training)."""
    if images.ndim != 4:
        raise ValueError(f"expected (N, C, H, W) images, got shape {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(-1, 1).mean(dim=1, keepdim=True)
    if x.shape[-2:] != (8, 8):
        x = F.interpolate(x, size=(8, 8), mode="area")
    return ((x + 1.0) * 8.0).reshape(len(x), 64).numpy()  # [-1, 1] -> [0, 16]


def _hidden_features(x64: np.ndarray) -> np.ndarray:
    """The classifier's hidden layer (128 ReLU units) for (N, 64) inputs on the 0..16 scale."""
    clf = digits_classifier()
    return np.maximum(x64 / 16.0 @ clf.coefs_[0] + clf.intercepts_[0], 0.0)


def _moments(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _upscaled(x64: np.ndarray, image_size: int) -> torch.Tensor:
    """Digits (N, 64) on the 0..16 scale as [-1, 1] images upscaled as the training data is."""
    x = torch.from_numpy(x64.reshape(-1, 1, 8, 8)).float() / 8.0 - 1.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False)
    return x.clamp(-1, 1)


@functools.lru_cache(maxsize=8)
def _real_moments(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature moments of the classifier's training split, taken through the same upscaling
    and reduction as generated images of ``image_size`` pixels."""
    x_train, _, _, _ = _split()
    return _moments(_hidden_features(to_digit_features(_upscaled(x_train, image_size))))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Frechet (2-Wasserstein) distance
    of two Gaussians, as FID computes it.

    tr (S1 S2)^(1/2) is the sum of the square roots of the eigenvalues of S1 S2, which are
    those of the symmetric R S2 R with R = S1^(1/2): two symmetric eigendecompositions,
    exact for the positive semi-definite (also singular) covariances of few images, and
    much faster than a general matrix square root of 2048x2048 Inception covariances.
    """
    w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    inner = root @ sigma2 @ root
    ev = np.linalg.eigvalsh((inner + inner.T) / 2)
    diff = mu1 - mu2
    trace_sqrt = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def _class_spread(features: np.ndarray, classes: np.ndarray) -> float:
    """sqrt of the mean over classes of tr(cov) of the features: the RMS distance of an
    image from its class mean (E||x - y||^2 = 2 tr cov within a class)."""
    traces = [
        np.trace(np.atleast_2d(np.cov(features[classes == c], rowvar=False)))
        for c in np.unique(classes)
        if (classes == c).sum() >= 2
    ]
    return float(np.sqrt(np.mean(traces))) if traces else 0.0


@functools.lru_cache(maxsize=8)
def _real_spread(image_size: int) -> float:
    x_train, _, y_train, _ = _split()
    feats = _hidden_features(to_digit_features(_upscaled(x_train, image_size)))
    return _class_spread(feats, y_train)


def within_class_variety(
    images: torch.Tensor, labels: Sequence[int] | torch.Tensor | None = None
) -> float:
    """How varied the images of each class are, relative to the real digits (1.0): the
    within-class spread of the classifier's hidden features, classes being ``labels`` (the
    requested ones) or, without them, the classifier's own predictions. Near 0: every
    image of a class alike (mode collapse); confidence and accuracy cannot see that."""
    x64 = to_digit_features(images)
    if labels is None:
        classes = digits_classifier().predict(x64 / 16.0)
    else:
        classes = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
    spread = _class_spread(_hidden_features(x64), classes)
    return spread / _real_spread(int(images.shape[-1]))


def _detail_rms(images: torch.Tensor) -> float:
    """sqrt(mean((x - up(down_8x8(x)))^2)): the energy above the classifier's resolution."""
    x = images.detach().float().cpu().clamp(-1, 1).mean(dim=1, keepdim=True)
    if x.shape[-2:] == (8, 8):
        return 0.0
    low = F.interpolate(F.interpolate(x, size=(8, 8), mode="area"), size=x.shape[-2:])
    return float((x - low).pow(2).mean().sqrt())


def _score(
    probs: np.ndarray, labels: np.ndarray | None, detail: float, frechet: float | None
) -> DigitsScore:
    eps = 1e-12
    p_y = probs.mean(axis=0)
    # IS = exp( E_x[ sum_y p(y|x) (log p(y|x) - log p(y)) ] )
    kl = (probs * (np.log(probs + eps) - np.log(p_y + eps))).sum(axis=1)
    acc, per = None, None
    if labels is not None:
        pred = probs.argmax(axis=1)
        acc = float((pred == labels).mean())
        per = {int(c): float((pred[labels == c] == c).mean()) for c in np.unique(labels)}
    return DigitsScore(
        n=len(probs),
        inception_score=float(np.exp(kl.mean())),
        confidence=float(probs.max(axis=1).mean()),
        label_accuracy=acc,
        per_label_accuracy=per,
        class_frequencies=[round(float(v), 4) for v in p_y],
        detail_rms=detail,
        frechet_distance=frechet,
    )


def digits_score(
    images: torch.Tensor, labels: Sequence[int] | torch.Tensor | None = None
) -> DigitsScore:
    """Score images (N, C, H, W) in [-1, 1]; ``labels`` are the requested classes, if any."""
    if len(images) == 0:
        raise ValueError("no images to score")
    x64 = to_digit_features(images)
    probs = digits_classifier().predict_proba(x64 / 16.0)
    frechet = None
    if len(images) >= 2:  # a covariance needs two images
        real = _real_moments(int(images.shape[-1]))
        frechet = frechet_distance(*_moments(_hidden_features(x64)), *real)
    lab = None
    if labels is not None:
        lab = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        if lab.shape != (len(images),):
            raise ValueError("labels must hold one class per image")
    return _score(probs, lab, _detail_rms(images), frechet)


@functools.lru_cache(maxsize=8)
def real_digits_reference(image_size: int = 16, n: int | None = None) -> DigitsScore:
    """The score of the held-out real digits (never seen by the classifier), first upscaled
    to ``image_size`` as the training data is: the ceiling a generator can reach."""
    _, x_test, _, y_test = _split()
    x_test, y_test = x_test[:n], y_test[:n]  # n: the first n, e.g. to match a sample's count
    return digits_score(_upscaled(x_test, image_size), torch.from_numpy(y_test))


@functools.lru_cache(maxsize=8)
def noise_reference(image_size: int = 16, n: int = 512, seed: int = 0) -> DigitsScore:
    """The score of Gaussian noise clipped to [-1, 1] (what an untrained model gives)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, image_size, image_size, generator=g).clamp(-1, 1)
    return digits_score(x)
