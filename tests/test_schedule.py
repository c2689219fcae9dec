"""Noise schedules and Gaussian diffusion quantities against direct formulas (ADM protocol §4)."""

import math

import numpy as np
import pytest
import torch

from evalsuite.diffusion import DiffusionSchedule, beta_schedule, make_schedule, space_timesteps
from evalsuite.runtime.errors import EvalsuiteError


def _direct_linear(num_steps: int) -> list[float]:
    scale = 1000 / num_steps
    start, end = 1e-4 * scale, 0.02 * scale
    return [start + i * (end - start) / (num_steps - 1) for i in range(num_steps)]


def _direct_cosine(num_steps: int) -> list[float]:
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return [
        min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
        for i in range(num_steps)
    ]


@pytest.mark.parametrize("num_steps", [1000, 21])
def test_linear_betas(num_steps):
    betas = beta_schedule("linear", num_steps)
    assert betas.dtype == np.float64 and betas.shape == (num_steps,)
    np.testing.assert_allclose(betas, _direct_linear(num_steps), rtol=1e-12, atol=0)
    if num_steps == 1000:
        assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)


@pytest.mark.parametrize("num_steps", [1000, 10])
def test_cosine_betas(num_steps):
    betas = beta_schedule("cosine", num_steps)
    assert betas.dtype == np.float64
    np.testing.assert_allclose(betas, _direct_cosine(num_steps), rtol=1e-12, atol=0)
    # The last step of the cosine schedule hits the 0.999 clip.
    assert betas[-1] == 0.999


def test_unknown_schedule_and_too_short_linear():
    with pytest.raises(EvalsuiteError, match="linear, cosine"):
        beta_schedule("quadratic", 10)
    # Linear betas reach 0.02 * 1000 / T, which is >= 1 for T <= 20.
    with pytest.raises(EvalsuiteError, match="num_steps > 20"):
        beta_schedule("linear", 20)


@pytest.mark.parametrize(
    "name,num_steps", [("linear", 1000), ("cosine", 1000), ("linear", 30), ("cosine", 7)]
)
def test_derived_quantities_match_direct_formulas(name, num_steps):
    schedule = make_schedule(name, num_steps)
    betas = list(beta_schedule(name, num_steps))
    np.testing.assert_array_equal(schedule.timesteps, np.arange(num_steps))
    alpha_bar, running = [], 1.0
    for beta in betas:
        running *= 1 - beta
        alpha_bar.append(running)
    alpha_bar_prev = [1.0] + alpha_bar[:-1]
    posterior_variance = [
        b * (1 - abp) / (1 - ab)
        for b, ab, abp in zip(betas, alpha_bar, alpha_bar_prev, strict=True)
    ]
    np.testing.assert_allclose(schedule.alpha_bar, alpha_bar, rtol=1e-10)
    np.testing.assert_allclose(schedule.alpha_bar_prev, alpha_bar_prev, rtol=1e-10)
    np.testing.assert_allclose(schedule.posterior_variance, posterior_variance, rtol=1e-10)
    assert schedule.posterior_variance[0] == 0.0
    np.testing.assert_allclose(
        schedule.posterior_log_variance_clipped,
        [math.log(posterior_variance[1])] + [math.log(v) for v in posterior_variance[1:]],
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        schedule.posterior_mean_coef1,
        [
            b * math.sqrt(abp) / (1 - ab)
            for b, ab, abp in zip(betas, alpha_bar, alpha_bar_prev, strict=True)
        ],
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        schedule.posterior_mean_coef2,
        [
            (1 - abp) * math.sqrt(1 - b) / (1 - ab)
            for b, ab, abp in zip(betas, alpha_bar, alpha_bar_prev, strict=True)
        ],
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        schedule.fixed_large_variance, [posterior_variance[1]] + betas[1:], rtol=1e-12
    )


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("spec", ["250", "ddim25", "10,20,30", "7"])
def test_respaced_chain_keeps_alpha_bar(name, spec):
    original = make_schedule(name, 1000)
    respaced = make_schedule(name, 1000, spec)
    kept = space_timesteps(1000, spec)
    assert respaced.timesteps.dtype == np.int64
    np.testing.assert_array_equal(respaced.timesteps, kept)
    assert respaced.num_steps == len(kept) and respaced.original_num_steps == 1000
    # (atol: cancellation in 1 - beta where alpha_bar ~ 1e-9 at the end of the cosine chain)
    np.testing.assert_allclose(respaced.alpha_bar, original.alpha_bar[kept], rtol=1e-12, atol=1e-16)
    # Respaced betas: 1 - alpha_bar_t / alpha_bar_last over the kept steps.
    previous = np.append(1.0, original.alpha_bar[kept][:-1])
    np.testing.assert_allclose(respaced.betas, 1 - original.alpha_bar[kept] / previous, rtol=1e-12)


def test_respacing_to_one_step_is_rejected():
    with pytest.raises(EvalsuiteError, match="at least 2"):
        make_schedule("linear", 1000, "1")


def test_schedule_arrays_are_read_only():
    schedule = make_schedule("linear", 50)
    with pytest.raises(ValueError):
        schedule.alpha_bar[0] = 0.5
    with pytest.raises(AttributeError):
        schedule.betas = np.ones(10)


def test_from_betas_defaults_and_validation():
    schedule = DiffusionSchedule.from_betas(np.full(5, 0.1))
    np.testing.assert_array_equal(schedule.timesteps, np.arange(5))
    assert schedule.original_num_steps == 5
    with pytest.raises(EvalsuiteError):
        DiffusionSchedule.from_betas(np.array([0.1, 0.0, 0.2]))
    with pytest.raises(EvalsuiteError):
        DiffusionSchedule.from_betas(np.full(3, 0.1), timesteps=[0, 2, 1])


def test_network_timesteps_are_original_or_rescaled():
    schedule = make_schedule("linear", 1000, "ddim25")
    t = torch.tensor([0, 1, 24])
    original = schedule.network_timesteps(t)
    assert original.dtype == torch.int64
    assert original.tolist() == [0, 40, 960]
    rescaled = schedule.network_timesteps(t, rescale_timesteps=True)
    assert rescaled.dtype == torch.float32
    assert rescaled.tolist() == [0.0, 40.0, 960.0]
    small = make_schedule("linear", 50)
    assert small.network_timesteps(torch.tensor([10]), rescale_timesteps=True).tolist() == [200.0]


def test_q_sample_and_x0_eps_round_trip():
    schedule = make_schedule("cosine", 100)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 2, 2, generator=generator, dtype=torch.float64)
    noise = torch.randn(4, 3, 2, 2, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 5, 50, 99])
    x_t = schedule.q_sample(x0, t, noise)
    for b, step in enumerate(t.tolist()):
        ab = schedule.alpha_bar[step]
        torch.testing.assert_close(x_t[b], math.sqrt(ab) * x0[b] + math.sqrt(1 - ab) * noise[b])
    torch.testing.assert_close(schedule.predict_x0_from_eps(x_t, t, noise), x0)
    torch.testing.assert_close(schedule.predict_eps_from_x0(x_t, t, x0), noise)


def _inputs(channels_out: int, dtype=torch.float64):
    generator = torch.Generator().manual_seed(1)
    x_t = torch.randn(3, 2, 4, 4, generator=generator, dtype=dtype)
    output = torch.randn(3, channels_out, 4, 4, generator=generator, dtype=dtype)
    return x_t, output


def test_learned_range_interpolates_this_chains_variances():
    # Respaced chain: its betas differ from the original chain's at the same timesteps.
    schedule = make_schedule("linear", 1000, "25")
    original = make_schedule("linear", 1000)
    x_t, output = _inputs(4)
    t = torch.tensor([0, 3, 24])
    for v_value, expected in [
        (1.0, schedule.log_betas),
        (-1.0, schedule.posterior_log_variance_clipped),
    ]:
        output[:, 2:] = v_value
        out = schedule.p_mean_variance(
            output, x_t, t, learn_sigma=True, predict_xstart=False, clip_denoised=False
        )
        for b, step in enumerate(t.tolist()):
            assert torch.allclose(
                out["log_variance"][b], torch.tensor(expected[step], dtype=torch.float64)
            )
    assert not np.isclose(schedule.log_betas[3], original.log_betas[schedule.timesteps[3]])
    # Midpoint v = 0: frac = 1/2, the geometric mean of the two variances.
    output[:, 2:] = 0.0
    out = schedule.p_mean_variance(
        output, x_t, t, learn_sigma=True, predict_xstart=False, clip_denoised=False
    )
    step = 3
    expected_log = 0.5 * (schedule.log_betas[step] + schedule.posterior_log_variance_clipped[step])
    assert torch.allclose(out["log_variance"][1], torch.tensor(expected_log, dtype=torch.float64))
    torch.testing.assert_close(out["variance"], torch.exp(out["log_variance"]))


def test_fixed_large_variance_and_eps_mean():
    schedule = make_schedule("cosine", 20)
    x_t, eps = _inputs(2)
    t = torch.tensor([0, 1, 19])
    out = schedule.p_mean_variance(
        eps, x_t, t, learn_sigma=False, predict_xstart=False, clip_denoised=False
    )
    expected_variance = [schedule.posterior_variance[1], schedule.betas[1], schedule.betas[19]]
    for b, value in enumerate(expected_variance):
        assert out["variance"][b].item() == pytest.approx(value, rel=1e-12)
        assert out["log_variance"][b].item() == pytest.approx(math.log(value), rel=1e-12)
    # Mean from x0 = sqrt(1/ab) x_t - sqrt(1/ab - 1) eps, then the posterior mean coefficients.
    for b, step in enumerate(t.tolist()):
        ab = schedule.alpha_bar[step]
        x0 = math.sqrt(1 / ab) * x_t[b] - math.sqrt(1 / ab - 1) * eps[b]
        torch.testing.assert_close(out["pred_x0"][b], x0)
        mean = (
            schedule.posterior_mean_coef1[step] * x0 + schedule.posterior_mean_coef2[step] * x_t[b]
        )
        torch.testing.assert_close(out["mean"][b], mean)
    torch.testing.assert_close(out["eps"], eps)


def test_predict_xstart_with_clipping_and_implied_eps():
    schedule = make_schedule("linear", 50)
    x_t, x0 = _inputs(2)
    x0 = 3 * x0
    t = torch.tensor([5, 10, 49])
    out = schedule.p_mean_variance(
        x0, x_t, t, learn_sigma=False, predict_xstart=True, clip_denoised=True
    )
    torch.testing.assert_close(out["pred_x0"], x0.clamp(-1, 1))
    assert out["pred_x0"].abs().max() <= 1
    # eps is the one implied by the clipped x0 (ADM protocol §5: DDIM uses it).
    torch.testing.assert_close(schedule.predict_x0_from_eps(x_t, t, out["eps"]), x0.clamp(-1, 1))


def test_quantities_are_cast_to_the_input_dtype():
    schedule = make_schedule("linear", 1000)
    x_t, output = _inputs(4, dtype=torch.float32)
    out = schedule.p_mean_variance(
        output,
        x_t,
        torch.tensor([0, 500, 999]),
        learn_sigma=True,
        predict_xstart=False,
        clip_denoised=True,
    )
    assert all(value.dtype == torch.float32 for value in out.values())


def test_wrong_output_channels():
    schedule = make_schedule("cosine", 10)
    x_t, output = _inputs(2)
    with pytest.raises(EvalsuiteError, match="expected 4 channels"):
        schedule.p_mean_variance(
            output,
            x_t,
            torch.tensor([1, 2, 3]),
            learn_sigma=True,
            predict_xstart=False,
            clip_denoised=False,
        )
