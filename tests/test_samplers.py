"""Samplers on Gaussian data with the exact denoiser, determinism and per-sample noise (ADM §5)."""

import math

import numpy as np
import pytest
import torch

from evalsuite.diffusion import (
    DiffusionSchedule,
    PerSampleNoise,
    make_denoiser,
    make_schedule,
    sample_ddim,
    sample_ddpm,
)
from evalsuite.runtime.errors import EvalsuiteError

DATA_MEAN = (0.7, -0.4)
NUM_SAMPLES = 4000


def _gaussian_model(
    noise_schedule: str, chain: DiffusionSchedule, data_std: float, *, learn_sigma: bool
):
    """Exact network for data N(DATA_MEAN, data_std^2 I) in 2 dims, shaped (B, 2, 1, 1).

    eps*(x_t) = sqrt(1-ab) (x_t - sqrt(ab) m) / (ab s^2 + 1 - ab) with ab the ORIGINAL chain's
    alpha_bar at the timestep the network receives. With ``learn_sigma`` the v channels give
    the exact reverse variance beta~_t + coef1_t^2 Var(x0 | x_t) of the (respaced) chain.
    """
    original = make_schedule(noise_schedule, chain.original_num_steps)
    mean = torch.tensor(DATA_MEAN, dtype=torch.float64).reshape(1, 2, 1, 1)
    variance = data_std**2

    def model_fn(x_t, timesteps):
        assert timesteps.dtype == torch.int64
        ab = torch.from_numpy(original.alpha_bar[timesteps.numpy()]).reshape(-1, 1, 1, 1)
        marginal_variance = ab * variance + 1 - ab
        eps = torch.sqrt(1 - ab) * (x_t - torch.sqrt(ab) * mean) / marginal_variance
        if not learn_sigma:
            return eps
        index = np.searchsorted(chain.timesteps, timesteps.numpy())

        def at(array):
            return torch.from_numpy(array[index]).reshape(-1, 1, 1, 1)

        x0_variance = variance * (1 - ab) / marginal_variance
        exact = at(chain.posterior_variance) + at(chain.posterior_mean_coef1) ** 2 * x0_variance
        low, high = at(chain.posterior_log_variance_clipped), at(chain.log_betas)
        v = 2 * (torch.log(exact) - low) / (high - low) - 1
        return torch.cat([eps, v.expand_as(eps)], dim=1)

    return model_fn


def _shared_noise(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(tuple(shape), generator=generator, dtype=torch.float64)


def _sample(sampler, noise_schedule, spec, data_std, *, learn_sigma=False, eta=0.0, seed=0):
    chain = make_schedule(noise_schedule, 1000, spec)
    model_fn = _gaussian_model(noise_schedule, chain, data_std, learn_sigma=learn_sigma)
    denoise = make_denoiser(
        model_fn, chain, learn_sigma=learn_sigma, predict_xstart=False, clip_denoised=False
    )
    noise = _shared_noise(seed)
    x_T = noise((NUM_SAMPLES, 2, 1, 1))
    if sampler == "ddpm":
        x0 = sample_ddpm(denoise, chain, x_T, noise=noise)
    else:
        x0 = sample_ddim(denoise, chain, x_T, noise=noise, eta=eta)
    return x0.reshape(NUM_SAMPLES, 2)


def _assert_mean(samples, data_std):
    standard_error = data_std / math.sqrt(NUM_SAMPLES)
    error = (samples.mean(0) - torch.tensor(DATA_MEAN, dtype=torch.float64)).abs()
    assert error.max() < 4 * standard_error, error


def _assert_variance(samples, expected, data_std):
    standard_error = data_std**2 * math.sqrt(2 / NUM_SAMPLES)
    error = (samples.var(0) - expected).abs()
    assert error.max() < 4 * standard_error, (samples.var(0), expected)


def test_ddpm_fixed_large_recovers_unit_variance_data():
    # For data std 1 the "fixed large" variance beta_t is the exact reverse variance.
    samples = _sample("ddpm", "linear", "50", 1.0)
    _assert_mean(samples, 1.0)
    _assert_variance(samples, 1.0, 1.0)


def test_ddpm_learned_range_recovers_narrow_data():
    samples = _sample("ddpm", "cosine", "50", 0.5, learn_sigma=True)
    _assert_mean(samples, 0.5)
    _assert_variance(samples, 0.25, 0.5)


def _ddim_discretised_variance(chain: DiffusionSchedule, data_variance: float) -> float:
    """Variance after deterministic DDIM on centred Gaussian data: each step is x -> a x with
    a = sqrt(abp) (1 - sqrt(1-ab) c) / sqrt(ab) + sqrt(1-abp) c, c = sqrt(1-ab)/(ab s^2 + 1 - ab)."""
    variance = 1.0
    for alpha_bar, alpha_bar_prev in zip(
        reversed(chain.alpha_bar.tolist()), reversed(chain.alpha_bar_prev.tolist()), strict=True
    ):
        c = math.sqrt(1 - alpha_bar) / (alpha_bar * data_variance + 1 - alpha_bar)
        a = (
            math.sqrt(alpha_bar_prev) * (1 - math.sqrt(1 - alpha_bar) * c) / math.sqrt(alpha_bar)
            + math.sqrt(1 - alpha_bar_prev) * c
        )
        variance *= a * a
    return variance


def test_ddim_recovers_data_up_to_its_discretisation():
    samples = _sample("ddim", "cosine", "100", 0.5)
    chain = make_schedule("cosine", 1000, "100")
    _assert_mean(samples, 0.5)
    _assert_variance(samples, _ddim_discretised_variance(chain, 0.25), 0.5)
    # 100 DDIM steps lose about 3% of the variance, not more.
    assert samples.var(0).min() > 0.25 * 0.92


def test_ddim_eta_one_is_stochastic_and_keeps_the_mean():
    first = _sample("ddim", "cosine", "50", 0.5, eta=1.0, seed=1)
    second = _sample("ddim", "cosine", "50", 0.5, eta=1.0, seed=2)
    assert not torch.equal(first, second)
    _assert_mean(first, 0.5)


def _tiny_denoiser(chain):
    weight = torch.tensor([[0.5, -0.2], [0.1, 0.3]], dtype=torch.float64)

    # A row-wise network: sample b's output depends only on sample b.
    def model_fn(x_t, timesteps):
        scale = 1 + timesteps.to(x_t.dtype).reshape(-1, 1, 1, 1) / 1000
        return torch.tanh(torch.einsum("oc,bchw->bohw", weight, x_t) * scale)

    return make_denoiser(model_fn, chain, learn_sigma=False, predict_xstart=False)


def test_ddim_eta_zero_is_a_deterministic_function_of_x_T():
    chain = make_schedule("linear", 1000, "ddim25")
    denoise = _tiny_denoiser(chain)
    x_T = torch.randn(5, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def no_noise(shape):
        raise AssertionError("eta = 0 must not draw noise")

    first = sample_ddim(denoise, chain, x_T, noise=no_noise)
    second = sample_ddim(denoise, chain, x_T.clone())
    assert torch.equal(first, second)
    # Each row depends only on its own x_T row (batch composition does not matter).
    assert torch.equal(sample_ddim(denoise, chain, x_T[2:4]), first[2:4])
    assert not torch.equal(first[0], first[1])


def test_ddim_with_eta_needs_noise():
    chain = make_schedule("linear", 100)
    with pytest.raises(EvalsuiteError, match="noise"):
        sample_ddim(_tiny_denoiser(chain), chain, torch.zeros(1, 2, 1, 1), eta=0.5)
    with pytest.raises(EvalsuiteError, match=r"\[0, 1\]"):
        sample_ddim(_tiny_denoiser(chain), chain, torch.zeros(1, 2, 1, 1), eta=1.5)


def test_per_sample_noise_rows_depend_only_on_their_generator():
    seeds = [11, 22, 33]
    full = PerSampleNoise.from_seeds(seeds)
    alone = PerSampleNoise.from_seeds([22])
    reordered = PerSampleNoise.from_seeds([33, 22])
    for _ in range(3):
        block = full((3, 2, 4, 4))
        assert block.shape == (3, 2, 4, 4) and block.dtype == torch.float32
        assert torch.equal(alone((1, 2, 4, 4))[0], block[1])
        assert torch.equal(reordered((2, 2, 4, 4)), block[[2, 1]])
    # Row b is the generator's own standard normal stream.
    reference = torch.Generator().manual_seed(33)
    expected = torch.randn(2, 4, 4, generator=reference)
    assert torch.equal(PerSampleNoise.from_seeds([5, 33])((2, 2, 4, 4))[1], expected)
    assert PerSampleNoise.from_seeds(seeds, dtype=torch.float64)((3, 1)).dtype == torch.float64


def test_per_sample_noise_rejects_wrong_batch():
    with pytest.raises(EvalsuiteError, match="3 generators"):
        PerSampleNoise.from_seeds([1, 2, 3])((2, 4))


def test_ddpm_with_per_sample_noise_does_not_depend_on_batch():
    chain = make_schedule("linear", 1000, "10")
    denoise = _tiny_denoiser(chain)

    def run(seeds):
        noise = PerSampleNoise.from_seeds(seeds, dtype=torch.float64)
        x_T = noise((len(seeds), 2, 3, 3))
        return sample_ddpm(denoise, chain, x_T, noise=noise)

    batch = run([7, 8, 9])
    assert torch.equal(run([8]), batch[1:2])
    assert torch.equal(run([9, 7]), batch[[2, 0]])


def test_ddpm_draws_noise_for_every_step_but_the_last():
    chain = make_schedule("cosine", 12)
    calls = []

    def noise(shape):
        calls.append(tuple(shape))
        return torch.zeros(shape, dtype=torch.float64)

    visited = []

    def progress(indices):
        for index in indices:
            visited.append(index)
            yield index

    x_T = torch.ones(2, 2, 1, 1, dtype=torch.float64)
    out = sample_ddpm(_tiny_denoiser(chain), chain, x_T, noise=noise, progress=progress)
    assert visited == list(range(11, -1, -1))
    assert calls == [(2, 2, 1, 1)] * 11
    assert out.dtype == torch.float64 and out.shape == x_T.shape


def test_ddpm_step_is_mean_plus_std_times_noise():
    # One step of a 2-step chain from index 1, then the noiseless step at index 0, by hand.
    chain = make_schedule("cosine", 2)
    fixed_output = torch.tensor([0.3, -0.1], dtype=torch.float64).reshape(1, 2, 1, 1)
    denoise = make_denoiser(
        lambda x, t: fixed_output.expand_as(x),
        chain,
        learn_sigma=False,
        predict_xstart=False,
        clip_denoised=False,
    )
    z = torch.tensor([1.5, -2.0], dtype=torch.float64).reshape(1, 2, 1, 1)
    x_T = torch.tensor([0.2, 0.9], dtype=torch.float64).reshape(1, 2, 1, 1)
    out = sample_ddpm(denoise, chain, x_T, noise=lambda shape: z)

    def posterior_mean(x, index):
        ab = chain.alpha_bar[index]
        x0 = math.sqrt(1 / ab) * x - math.sqrt(1 / ab - 1) * fixed_output
        return chain.posterior_mean_coef1[index] * x0 + chain.posterior_mean_coef2[index] * x

    x_1 = posterior_mean(x_T, 1) + math.sqrt(chain.betas[1]) * z
    torch.testing.assert_close(out, posterior_mean(x_1, 0))


def test_make_denoiser_passes_original_or_rescaled_timesteps():
    chain = make_schedule("linear", 1000, "ddim50")
    seen = {}

    def model_fn(x_t, timesteps, y=None):
        seen["timesteps"], seen["y"] = timesteps, y
        return torch.zeros_like(x_t)

    x = torch.zeros(3, 2, 1, 1)
    labels = torch.tensor([4, 5, 6])
    denoise = make_denoiser(
        model_fn, chain, learn_sigma=False, predict_xstart=False, model_kwargs={"y": labels}
    )
    out = denoise(x, torch.tensor([0, 1, 49]))
    assert set(out) == {"mean", "variance", "log_variance", "pred_x0", "eps"}
    assert seen["timesteps"].dtype == torch.int64
    assert seen["timesteps"].tolist() == [0, 20, 980]
    assert seen["y"] is labels
    rescaled = make_denoiser(
        model_fn,
        make_schedule("linear", 100, "ddim10"),
        learn_sigma=False,
        predict_xstart=False,
        rescale_timesteps=True,
    )
    rescaled(x, torch.tensor([0, 1, 9]))
    assert seen["timesteps"].dtype == torch.float32
    assert seen["timesteps"].tolist() == [0.0, 100.0, 900.0]
