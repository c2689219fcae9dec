"""IDDPM hybrid loss: KL / decoder NLL pieces against independent formulas, frozen mean (ADM §4)."""

import math

import pytest
import torch
from scipy.special import ndtr

from evalsuite.diffusion import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    make_schedule,
    normal_kl,
    sample_timesteps,
    training_losses,
)
from evalsuite.runtime.errors import EvalsuiteError


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_normal_kl_matches_torch_distributions():
    generator = _generator()
    mean1, mean2 = torch.randn(2, 50, generator=generator, dtype=torch.float64)
    logvar1, logvar2 = torch.randn(2, 50, generator=generator, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean1, torch.exp(0.5 * logvar1)),
        torch.distributions.Normal(mean2, torch.exp(0.5 * logvar2)),
    )
    torch.testing.assert_close(normal_kl(mean1, logvar1, mean2, logvar2), expected)
    assert normal_kl(mean1, logvar1, mean1, logvar1).abs().max() < 1e-15


def test_approx_cdf_is_close_to_the_exact_normal_cdf():
    x = torch.linspace(-6, 6, 2001, dtype=torch.float64)
    exact = torch.from_numpy(ndtr(x.numpy()))
    # The tanh approximation is within 2e-4 of Phi everywhere.
    assert (approx_standard_normal_cdf(x) - exact).abs().max() < 2e-4
    assert approx_standard_normal_cdf(torch.tensor(0.0)).item() == 0.5


def _direct_log_likelihood(x: float, mean: float, std: float) -> float:
    # Exact Gaussian mass of the 8-bit bin [x - 1/255, x + 1/255], tails into the edge bins.
    upper = ndtr((x + 1 / 255 - mean) / std)
    lower = ndtr((x - 1 / 255 - mean) / std)
    if x < -0.999:
        return math.log(upper)
    if x > 0.999:
        return math.log(1 - lower)
    return math.log(upper - lower)


@pytest.mark.parametrize(
    "x,mean,std",
    [(0.0, 0.0, 0.1), (0.2, 0.25, 0.05), (-1.0, -0.9, 0.2), (1.0, 0.95, 0.1), (-0.5, 0.1, 0.5)],
)
def test_discretized_log_likelihood_against_direct_formula(x, mean, std):
    value = discretized_gaussian_log_likelihood(
        torch.tensor([x], dtype=torch.float64),
        means=torch.tensor([mean], dtype=torch.float64),
        log_scales=torch.tensor([math.log(std)], dtype=torch.float64),
    )
    # Tolerance of the tanh CDF approximation.
    assert value.item() == pytest.approx(_direct_log_likelihood(x, mean, std), rel=2e-3, abs=2e-3)


def test_discretized_log_likelihood_small_std_concentrates_in_one_bin():
    x = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    value = discretized_gaussian_log_likelihood(x, means=x, log_scales=torch.full_like(x, -8.0))
    assert value.abs().max() < 1e-6


def _model(output: torch.Tensor):
    seen = {}

    def model_fn(x_t, timesteps, **kwargs):
        seen["x_t"], seen["timesteps"], seen["kwargs"] = x_t, timesteps, kwargs
        return output

    return model_fn, seen


def _batch(schedule, t_index, out_channels=6, seed=0):
    generator = _generator(seed)
    b = len(t_index)
    x0 = torch.rand(b, 3, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(b, 3, 4, 4, generator=generator, dtype=torch.float64)
    output = torch.randn(b, out_channels, 4, 4, generator=generator, dtype=torch.float64)
    if out_channels == 6:
        output[:, 3:] = output[:, 3:].tanh()
    return x0, noise, output


def test_mse_vb_and_loss_against_direct_computation():
    schedule = make_schedule("cosine", 1000, "100")
    t_index = torch.tensor([0, 1, 50, 99])
    x0, noise, output = _batch(schedule, t_index)
    model_fn, seen = _model(output)
    labels = torch.tensor([1, 2, 3, 4])
    terms = training_losses(
        model_fn, schedule, x0, t_index, noise=noise, model_kwargs={"y": labels}
    )
    assert seen["timesteps"].tolist() == schedule.timesteps[[0, 1, 50, 99]].tolist()
    assert seen["kwargs"]["y"] is labels
    for b, index in enumerate(t_index.tolist()):
        ab = schedule.alpha_bar[index]
        torch.testing.assert_close(
            seen["x_t"][b], math.sqrt(ab) * x0[b] + math.sqrt(1 - ab) * noise[b]
        )
        eps, v = output[b, :3], output[b, 3:]
        torch.testing.assert_close(terms["mse"][b], ((noise[b] - eps) ** 2).mean())
        # Model Gaussian by hand: learned range, eps mean type, no clipping.
        frac = (v + 1) / 2
        log_variance = (
            frac * schedule.log_betas[index]
            + (1 - frac) * schedule.posterior_log_variance_clipped[index]
        )
        x_t = seen["x_t"][b]
        pred_x0 = math.sqrt(1 / ab) * x_t - math.sqrt(1 / ab - 1) * eps
        coef1, coef2 = schedule.posterior_mean_coef1[index], schedule.posterior_mean_coef2[index]
        model_mean = coef1 * pred_x0 + coef2 * x_t
        if index == 0:
            expected = -torch.tensor(
                [
                    _direct_log_likelihood(x, m, s)
                    for x, m, s in zip(
                        x0[b].flatten().tolist(),
                        model_mean.flatten().tolist(),
                        torch.exp(0.5 * log_variance).flatten().tolist(),
                        strict=True,
                    )
                ]
            ).mean() / math.log(2)
            assert terms["vb"][b].item() == pytest.approx(expected.item(), rel=2e-3)
        else:
            true = torch.distributions.Normal(
                coef1 * x0[b] + coef2 * x_t, math.sqrt(schedule.posterior_variance[index])
            )
            model = torch.distributions.Normal(model_mean, torch.exp(0.5 * log_variance))
            expected = torch.distributions.kl_divergence(true, model).mean() / math.log(2)
            torch.testing.assert_close(terms["vb"][b], expected)
            assert terms["vb"][b] > 0
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])


def test_vb_is_finite_nonnegative_and_zero_for_the_exact_posterior():
    schedule = make_schedule("linear", 1000)
    t_index = torch.arange(1, 1000, 37)
    x0, noise, output = _batch(schedule, t_index, seed=1)
    terms = training_losses(_model(output)[0], schedule, x0, t_index, noise=noise)
    assert torch.isfinite(terms["vb"]).all() and (terms["vb"] >= 0).all()
    # A model predicting the true x0 with v = -1 (variance beta~_t) matches q exactly: KL = 0.
    exact = torch.cat([x0, -torch.ones_like(x0)], dim=1)
    terms = training_losses(
        _model(exact)[0], schedule, x0, t_index, noise=noise, predict_xstart=True
    )
    assert terms["vb"].abs().max() < 1e-9
    assert terms["mse"].abs().max() == 0


def test_vb_trains_only_the_variance_channels():
    schedule = make_schedule("cosine", 50)
    t_index = torch.tensor([0, 10, 49])
    x0, noise, output = _batch(schedule, t_index, seed=2)
    output.requires_grad_(True)
    terms = training_losses(_model(output)[0], schedule, x0, t_index, noise=noise)
    (vb_gradient,) = torch.autograd.grad(terms["vb"].sum(), output, retain_graph=True)
    assert vb_gradient[:, :3].abs().max() == 0
    assert vb_gradient[:, 3:].abs().min() > 0
    (mse_gradient,) = torch.autograd.grad(terms["mse"].sum(), output)
    assert mse_gradient[:, 3:].abs().max() == 0
    assert mse_gradient[:, :3].abs().max() > 0


def test_fixed_variance_model_has_mse_only():
    schedule = make_schedule("cosine", 50)
    t_index = torch.tensor([0, 25])
    x0, noise, output = _batch(schedule, t_index, out_channels=3)
    terms = training_losses(
        _model(output)[0], schedule, x0, t_index, noise=noise, learn_sigma=False
    )
    assert torch.equal(terms["vb"], torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(terms["loss"], ((noise - output) ** 2).mean(dim=(1, 2, 3)))
    with pytest.raises(EvalsuiteError, match="expected 6"):
        training_losses(_model(output)[0], schedule, x0, t_index, noise=noise)


def test_sample_timesteps_uniform_and_seeded():
    first = sample_timesteps(20000, 10, _generator(4))
    assert first.dtype == torch.int64 and first.shape == (20000,)
    assert first.min() == 0 and first.max() == 9
    counts = torch.bincount(first, minlength=10).double()
    assert (counts / 2000 - 1).abs().max() < 0.1
    assert torch.equal(first, sample_timesteps(20000, 10, _generator(4)))
