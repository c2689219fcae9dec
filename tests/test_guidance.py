"""Classifier guidance: gradient, the two ways of applying it, direction and scale 0 (ADM §5)."""

import math

import pytest
import torch

from evalsuite.diffusion import (
    ClassifierGuidance,
    guided,
    make_denoiser,
    make_schedule,
    sample_ddim,
    sample_ddpm,
)
from evalsuite.runtime.errors import EvalsuiteError

# A linear noise-aware classifier over 2-dim data (B, 2, 1, 1): logits = (x W^T + b) (1 + t/1000).
CLASS_WEIGHTS = torch.tensor([[2.0, 0.5], [-1.0, 1.0], [0.0, -1.5]], dtype=torch.float64)
CLASS_BIAS = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)


def linear_classifier(x_t, timesteps):
    logits = x_t.flatten(1) @ CLASS_WEIGHTS.T.to(x_t.dtype) + CLASS_BIAS.to(x_t.dtype)
    return logits * (1 + timesteps.to(x_t.dtype)[:, None] / 1000)


def gaussian_eps_model(noise_schedule: str, data_std: float = 0.5):
    """Exact unconditional eps network for data N(0, data_std^2 I); knows nothing of labels."""
    original = make_schedule(noise_schedule, 1000)

    def model_fn(x_t, timesteps):
        ab = torch.from_numpy(original.alpha_bar[timesteps.numpy()]).reshape(-1, 1, 1, 1)
        return torch.sqrt(1 - ab) * x_t / (ab * data_std**2 + 1 - ab)

    return model_fn


def _log_p(x, labels, timesteps=None):
    timesteps = torch.zeros(len(x), dtype=torch.int64) if timesteps is None else timesteps
    return torch.log_softmax(linear_classifier(x, timesteps), dim=-1)[range(len(x)), labels]


def test_gradient_matches_finite_differences():
    chain = make_schedule("linear", 1000, "ddim25")
    labels = torch.tensor([0, 2, 1])
    guidance = ClassifierGuidance(linear_classifier, chain, labels, scale=2.5)
    x = torch.randn(3, 2, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([24, 10, 0])
    with torch.no_grad():
        gradient = guidance.gradient(x, t)
    original_t = torch.tensor([960, 400, 0])
    step = 1e-6
    for channel in range(2):
        offset = torch.zeros_like(x)
        offset[:, channel] = step
        difference = (
            _log_p(x + offset, labels, original_t) - _log_p(x - offset, labels, original_t)
        ) / (2 * step)
        torch.testing.assert_close(
            gradient[:, channel, 0, 0], 2.5 * difference, rtol=1e-6, atol=1e-8
        )


def test_gradient_closed_form_and_timesteps():
    # d/dx log softmax(Wx)[y] = (W_y - sum_k p_k W_k) (1 + t/1000) for the linear classifier.
    chain = make_schedule("cosine", 1000, "50")
    seen = []

    def classifier(x_t, timesteps):
        seen.append(timesteps)
        return linear_classifier(x_t, timesteps)

    labels = torch.tensor([1, 1])
    x = torch.tensor([[0.3, -0.2], [1.0, 2.0]], dtype=torch.float32).reshape(2, 2, 1, 1)
    t = torch.tensor([49, 3])
    gradient = ClassifierGuidance(classifier, chain, labels, scale=1.0).gradient(x, t)
    assert gradient.dtype == torch.float32 and gradient.shape == x.shape
    assert seen[0].dtype == torch.int64 and seen[0].tolist() == chain.timesteps[[49, 3]].tolist()
    factor = 1 + torch.tensor(chain.timesteps[[49, 3]], dtype=torch.float64) / 1000
    p = torch.softmax(linear_classifier(x.double(), seen[0]), dim=-1)
    expected = (CLASS_WEIGHTS[1] - p @ CLASS_WEIGHTS) * factor[:, None]
    torch.testing.assert_close(gradient.reshape(2, 2).double(), expected, rtol=1e-5, atol=1e-6)
    ClassifierGuidance(classifier, chain, labels, scale=1.0, rescale_timesteps=True).gradient(x, t)
    assert seen[-1].dtype == torch.float32


def test_gradient_works_under_no_grad_and_leaves_input_alone():
    chain = make_schedule("cosine", 10)
    x = torch.randn(2, 2, 1, 1, generator=torch.Generator().manual_seed(3))
    guidance = ClassifierGuidance(linear_classifier, chain, torch.tensor([0, 1]), scale=1.0)
    with torch.no_grad():
        gradient = guidance.gradient(x, torch.tensor([5, 5]))
    assert gradient.abs().sum() > 0
    assert not x.requires_grad and x.grad is None


def test_ddpm_mode_shifts_mean_by_variance_times_gradient():
    chain = make_schedule("linear", 1000, "250")
    denoise = make_denoiser(
        gaussian_eps_model("linear"), chain, learn_sigma=False, predict_xstart=False
    )
    labels = torch.tensor([0, 2])
    guidance = ClassifierGuidance(linear_classifier, chain, labels, scale=3.0)
    x = torch.randn(2, 2, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([100, 249])
    plain, shifted = denoise(x, t), guided(denoise, guidance, mode="ddpm")(x, t)
    expected = plain["mean"] + plain["variance"] * guidance.gradient(x, t)
    torch.testing.assert_close(shifted["mean"], expected)
    # The variance, not the std: the shift is small against the std at these steps.
    assert not torch.allclose(
        shifted["mean"], plain["mean"] + plain["variance"].sqrt() * guidance.gradient(x, t)
    )
    for key in ("variance", "log_variance", "pred_x0", "eps"):
        assert torch.equal(shifted[key], plain[key])


def test_ddim_mode_shifts_eps_and_recomputes_unclipped_x0():
    chain = make_schedule("linear", 1000, "ddim25")
    denoise = make_denoiser(
        gaussian_eps_model("linear"), chain, learn_sigma=False, predict_xstart=False
    )
    guidance = ClassifierGuidance(linear_classifier, chain, torch.tensor([0, 0]), scale=50.0)
    x = torch.tensor([[0.9, 0.1], [-0.5, 0.4]], dtype=torch.float64).reshape(2, 2, 1, 1)
    t = torch.tensor([2, 2])
    plain, shifted = denoise(x, t), guided(denoise, guidance, mode="ddim")(x, t)
    alpha_bar = chain.alpha_bar[2]
    eps = plain["eps"] - math.sqrt(1 - alpha_bar) * guidance.gradient(x, t)
    torch.testing.assert_close(shifted["eps"], eps)
    x0 = math.sqrt(1 / alpha_bar) * x - math.sqrt(1 / alpha_bar - 1) * eps
    torch.testing.assert_close(shifted["pred_x0"], x0)
    # Not re-clipped, although the denoiser clips (clip_denoised=True by default).
    assert shifted["pred_x0"].abs().max() > 1
    mean = chain.posterior_mean_coef1[2] * x0 + chain.posterior_mean_coef2[2] * x
    torch.testing.assert_close(shifted["mean"], mean)


def _sample(sampler, scale, noise_schedule="cosine", spec="50", labels=None):
    chain = make_schedule(noise_schedule, 1000, spec)
    denoise = make_denoiser(
        gaussian_eps_model(noise_schedule),
        chain,
        learn_sigma=False,
        predict_xstart=False,
        clip_denoised=False,
    )
    labels = torch.zeros(200, dtype=torch.int64) if labels is None else labels
    guidance = ClassifierGuidance(linear_classifier, chain, labels, scale=scale)
    generator = torch.Generator().manual_seed(5)

    def noise(shape):
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float64)

    x_T = noise((len(labels), 2, 1, 1))
    if sampler == "ddpm":
        return sample_ddpm(denoise, chain, x_T, noise=noise, guidance=guidance), labels
    return sample_ddim(denoise, chain, x_T, guidance=guidance), labels


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_positive_scale_raises_log_p_of_the_label(sampler):
    labels = torch.arange(200) % 3
    unguided, _ = _sample(sampler, 0.0, labels=labels)
    guided_samples, _ = _sample(sampler, 2.0, labels=labels)
    assert _log_p(guided_samples, labels).mean() > _log_p(unguided, labels).mean() + 0.1
    assert (_log_p(guided_samples, labels) > _log_p(unguided, labels)).float().mean() > 0.9


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_scale_zero_is_bit_identical_to_unguided(sampler):
    calls = []

    def counting_classifier(x_t, timesteps):
        calls.append(1)
        return linear_classifier(x_t, timesteps)

    chain = make_schedule("linear", 1000, "25")
    denoise = make_denoiser(
        gaussian_eps_model("linear"), chain, learn_sigma=False, predict_xstart=False
    )
    guidance = ClassifierGuidance(
        counting_classifier, chain, torch.zeros(8, dtype=torch.int64), 0.0
    )
    assert guided(denoise, guidance, mode=sampler) is denoise

    def run(with_guidance):
        generator = torch.Generator().manual_seed(9)

        def noise(shape):
            return torch.randn(tuple(shape), generator=generator)

        x_T = noise((8, 2, 1, 1))
        if sampler == "ddpm":
            return sample_ddpm(denoise, chain, x_T, noise=noise, guidance=with_guidance)
        return sample_ddim(denoise, chain, x_T, guidance=with_guidance)

    assert torch.equal(run(guidance), run(None))
    assert calls == []


def test_invalid_guidance_inputs():
    chain = make_schedule("cosine", 10)
    with pytest.raises(EvalsuiteError, match="finite"):
        ClassifierGuidance(
            linear_classifier, chain, torch.zeros(2, dtype=torch.int64), float("nan")
        )
    with pytest.raises(EvalsuiteError, match="int64"):
        ClassifierGuidance(linear_classifier, chain, torch.zeros(2), 1.0)
    guidance = ClassifierGuidance(linear_classifier, chain, torch.zeros(2, dtype=torch.int64), 1.0)
    with pytest.raises(EvalsuiteError, match="2 labels for a batch of 3"):
        guidance.gradient(torch.zeros(3, 2, 1, 1), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(EvalsuiteError, match="guidance mode"):
        guided(lambda x, t: {}, guidance, mode="euler")
