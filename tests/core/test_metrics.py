import numpy as np
import pytest
import torch

from ddpm_core.data import load_digits
from ddpm_core.metrics import (
    digits_score,
    noise_reference,
    real_digits_reference,
    to_digit_features,
)


def test_real_digits_score_high_and_noise_low() -> None:
    real = real_digits_reference(16)
    noise = noise_reference(16)
    assert real.inception_score > 8.0  # at most 10 for 10 classes
    assert real.label_accuracy > 0.95 and real.confidence > 0.9
    assert set(real.per_label_accuracy) == set(range(10))
    assert noise.inception_score < 2.5
    assert noise.label_accuracy is None
    assert sum(real.class_frequencies) == pytest.approx(1.0, abs=1e-3)
    # Noise carries most of its energy above 8x8; the real digits much less.
    assert noise.detail_rms > 2 * real.detail_rms


def test_detail_rms_flags_high_frequency_noise_the_classifier_cannot_see() -> None:
    ds = load_digits(image_size=16)
    x = ds.pixels[:200]
    # A +-0.6 checkerboard averages out in every 2x2 box: invisible at 8x8.
    sign = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(8, 8)
    noisy = x + 0.6 * sign
    clean, dirty = digits_score(x), digits_score(noisy)
    assert dirty.detail_rms > 1.5 * clean.detail_rms
    assert dirty.inception_score > 0.8 * clean.inception_score  # the blind spot it covers


def test_features_undo_the_training_upscale() -> None:
    ds = load_digits(image_size=16)
    feats = to_digit_features(ds.pixels[:20])
    assert feats.shape == (20, 64)
    assert feats.min() >= 0.0 and feats.max() <= 16.0
    from ddpm_core.data import digits_arrays

    original = digits_arrays()[0][:20].reshape(20, 64)
    assert np.abs(feats - original).mean() < 1.5  # on the 0..16 scale
    rgb = to_digit_features(ds.pixels[:3].expand(-1, 3, -1, -1))
    assert np.allclose(rgb, feats[:3], atol=1e-5)


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        digits_score(torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError):
        digits_score(torch.zeros(4, 1, 8, 8), [0, 1])
    with pytest.raises(ValueError):
        to_digit_features(torch.zeros(8, 8))
    d = digits_score(torch.zeros(4, 1, 8, 8), [0, 1, 2, 3]).to_dict()
    assert set(d["per_label_accuracy"]) == {"0", "1", "2", "3"}
    assert d["detail_rms"] == 0.0  # already 8x8: nothing is thrown away


def test_one_repeated_digit_has_an_inception_score_near_one() -> None:
    ds = load_digits(image_size=16)
    zeros = ds.pixels[ds.labels == 0][:50]
    score = digits_score(zeros, [0] * len(zeros))
    assert score.inception_score < 1.3  # confident, but p(y) is one class: KL ~ 0
    assert score.confidence > 0.9 and score.label_accuracy > 0.9
    wrong = digits_score(zeros, [1] * len(zeros))
    assert wrong.label_accuracy < 0.1


def test_frechet_distance_sees_variety_that_the_other_scores_miss() -> None:
    """Held-out real digits are close to the training split; ten copies of one image per
    class (perfect on IS, confidence and accuracy) and noise are far from it."""
    from ddpm_core.metrics import frechet_distance

    real = real_digits_reference(16)
    noise = noise_reference(16)
    ds = load_digits(image_size=16)
    one_each = torch.stack([ds.pixels[ds.labels == c][0] for c in range(10)]).repeat(20, 1, 1, 1)
    labels = list(range(10)) * 20
    copies = digits_score(one_each, labels)
    assert copies.label_accuracy == 1.0 and copies.inception_score > 0.95 * real.inception_score
    assert real.frechet_distance < 0.5
    assert copies.frechet_distance > 3 * real.frechet_distance
    assert noise.frechet_distance > 10 * real.frechet_distance
    # The Gaussian formula itself: equal moments give 0; shifted means give |d|^2.
    mu, cov = np.zeros(3), np.diag([1.0, 2.0, 3.0])
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu, cov, mu + 2.0, cov) == pytest.approx(12.0, abs=1e-9)
    # N(0, a^2) vs N(0, b^2) in one dimension: (a - b)^2.
    assert frechet_distance(mu[:1], np.eye(1) * 4.0, mu[:1], np.eye(1)) == pytest.approx(1.0)


def test_within_class_variety_is_one_for_real_digits_and_zero_for_copies() -> None:
    from ddpm_core.data import digits_arrays
    from ddpm_core.metrics import within_class_variety

    ds = load_digits(image_size=16)
    real = within_class_variety(ds.pixels[:600], ds.labels[:600])
    assert 0.85 < real < 1.15
    # Without labels the classifier's predictions define the classes: about the same.
    assert within_class_variety(ds.pixels[:600]) == pytest.approx(real, rel=0.1)
    one_each = torch.stack([ds.pixels[ds.labels == c][0] for c in range(10)]).repeat(5, 1, 1, 1)
    assert within_class_variety(one_each, list(range(10)) * 5) < 0.01
    blurred = torch.nn.functional.avg_pool2d(ds.pixels[:600].float(), 5, 1, 2)
    assert within_class_variety(blurred, ds.labels[:600]) < real
    assert digits_arrays()[0].shape[1:] == (8, 8)
