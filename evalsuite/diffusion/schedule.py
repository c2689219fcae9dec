"""Noise schedules and the Gaussian diffusion quantities of one (possibly respaced) chain.

All schedule quantities are float64 numpy arrays; the torch methods gather them at per-sample
chain indices and cast them to the dtype of the tensor they are applied to (ADM protocol §4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from evalsuite.diffusion.respace import space_timesteps
from evalsuite.runtime.errors import EvalsuiteError

NOISE_SCHEDULES = ("linear", "cosine")

# A denoiser: (x_t (B, C, H, W), t_index int64 (B,) indices of the chain) -> dict with the keys
# of ``DiffusionSchedule.p_mean_variance``: mean, variance, log_variance, pred_x0, eps.
DenoiseFn = Callable[[Tensor, Tensor], dict[str, Tensor]]


def beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """Betas of the named noise schedule (ADM protocol §4).

    Args:
        name: "linear" (Ho et al., scaled to T steps) or "cosine" (Nichol & Dhariwal).
        num_steps: T >= 1 (T > 20 for "linear").

    Returns:
        float64 array (T,), values in (0, 1).
    """
    if num_steps < 1:
        raise EvalsuiteError(f"num_steps must be >= 1, got {num_steps}")
    if name == "linear":
        if num_steps <= 20:
            raise EvalsuiteError(
                f"the linear schedule needs num_steps > 20 (its last beta is 20 / num_steps), "
                f"got {num_steps}; use the cosine schedule for shorter chains"
            )
        # linspace(1e-4 * 1000/T, 0.02 * 1000/T, T) (ADM protocol §4).
        scale = 1000 / num_steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
    if name == "cosine":
        # beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), 0.999) (ADM protocol §4).
        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array(
            [
                min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999)
                for i in range(num_steps)
            ],
            dtype=np.float64,
        )
    raise EvalsuiteError(
        f"unknown noise schedule {name!r}; expected one of {', '.join(NOISE_SCHEDULES)}"
    )


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class DiffusionSchedule:
    """One Gaussian diffusion chain of ``num_steps`` steps (index 0 = least noisy).

    ``betas`` (float64 (N,)) define the chain; ``timesteps`` (int64 (N,)) is the original
    timestep each chain index stands for (identity for an unrespaced chain) and
    ``original_num_steps`` the length T of the chain the network was trained on. Every other
    field is derived (float64 (N,), ADM protocol §4).
    """

    betas: np.ndarray
    timesteps: np.ndarray
    original_num_steps: int
    alpha_bar: np.ndarray = field(init=False)
    alpha_bar_prev: np.ndarray = field(init=False)
    sqrt_alpha_bar: np.ndarray = field(init=False)
    sqrt_one_minus_alpha_bar: np.ndarray = field(init=False)
    sqrt_recip_alpha_bar: np.ndarray = field(init=False)
    sqrt_recipm1_alpha_bar: np.ndarray = field(init=False)
    posterior_variance: np.ndarray = field(init=False)
    posterior_log_variance_clipped: np.ndarray = field(init=False)
    posterior_mean_coef1: np.ndarray = field(init=False)
    posterior_mean_coef2: np.ndarray = field(init=False)
    log_betas: np.ndarray = field(init=False)
    fixed_large_variance: np.ndarray = field(init=False)
    fixed_large_log_variance: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        betas = np.asarray(self.betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) < 2:
            raise EvalsuiteError(
                f"betas must be a 1-D array of >= 2 steps, got shape {betas.shape}"
            )
        if not np.all((betas > 0) & (betas < 1)):
            raise EvalsuiteError("betas must lie in the open interval (0, 1)")
        timesteps = np.asarray(self.timesteps, dtype=np.int64)
        if timesteps.shape != betas.shape or np.any(np.diff(timesteps) <= 0):
            raise EvalsuiteError(
                f"timesteps must be strictly increasing with one entry per beta ({len(betas)}), "
                f"got shape {timesteps.shape}"
            )
        if timesteps[0] < 0 or timesteps[-1] >= self.original_num_steps:
            raise EvalsuiteError(
                f"timesteps must lie in [0, {self.original_num_steps}), "
                f"got [{timesteps[0]}, {timesteps[-1]}]"
            )
        # Derived quantities, float64 (ADM protocol §4).
        alpha_bar = np.cumprod(1.0 - betas)
        alpha_bar_prev = np.append(1.0, alpha_bar[:-1])
        posterior_variance = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
        fixed_large_variance = np.append(posterior_variance[1], betas[1:])
        derived = {
            "betas": betas,
            "timesteps": timesteps,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": np.sqrt(alpha_bar),
            "sqrt_one_minus_alpha_bar": np.sqrt(1.0 - alpha_bar),
            "sqrt_recip_alpha_bar": np.sqrt(1.0 / alpha_bar),
            "sqrt_recipm1_alpha_bar": np.sqrt(1.0 / alpha_bar - 1.0),
            "posterior_variance": posterior_variance,
            # log beta~_t with the t=0 entry (beta~_0 = 0) replaced by beta~_1.
            "posterior_log_variance_clipped": np.log(
                np.append(posterior_variance[1], posterior_variance[1:])
            ),
            "posterior_mean_coef1": betas * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar),
            "posterior_mean_coef2": (1.0 - alpha_bar_prev)
            * np.sqrt(1.0 - betas)
            / (1.0 - alpha_bar),
            "log_betas": np.log(betas),
            # "fixed large" variance [beta~_1, beta_1, beta_2, ...].
            "fixed_large_variance": fixed_large_variance,
            "fixed_large_log_variance": np.log(fixed_large_variance),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, _frozen(value))

    @classmethod
    def from_betas(
        cls,
        betas: np.ndarray,
        timesteps: np.ndarray | list[int] | None = None,
        original_num_steps: int | None = None,
    ) -> DiffusionSchedule:
        """Chain from its betas; ``timesteps`` defaults to the identity 0..N-1 and
        ``original_num_steps`` to ``timesteps[-1] + 1``."""
        betas = np.asarray(betas, dtype=np.float64)
        if timesteps is None:
            timesteps = np.arange(len(betas), dtype=np.int64)
        timesteps = np.asarray(timesteps, dtype=np.int64)
        if original_num_steps is None:
            original_num_steps = int(timesteps.max(initial=-1)) + 1
        return cls(betas=betas, timesteps=timesteps, original_num_steps=original_num_steps)

    @property
    def num_steps(self) -> int:
        """Number of steps N of this chain."""
        return len(self.betas)

    def gather(self, array: np.ndarray, t: Tensor, like: Tensor) -> Tensor:
        """``array`` (float64 (N,), one of this chain's quantities) at chain indices ``t``
        (int64 (B,)), cast to the dtype/device of ``like`` and shaped (B, 1, ...) to broadcast
        over it."""
        values = torch.from_numpy(array[t.detach().cpu().numpy()])
        values = values.to(device=like.device, dtype=like.dtype)
        return values.reshape(values.shape + (1,) * (like.ndim - 1))

    def network_timesteps(self, t: Tensor, *, rescale_timesteps: bool = False) -> Tensor:
        """Timesteps a network receives for chain indices ``t`` (ADM protocol §4).

        Args:
            t: int64 (B,) chain indices.
            rescale_timesteps: False (guided-diffusion): the original integer timestep, int64 (B,);
                True (improved-diffusion checkpoints): original * 1000 / T, float32 (B,).
        """
        original = torch.from_numpy(self.timesteps[t.detach().cpu().numpy()]).to(t.device)
        if rescale_timesteps:
            return original.float() * (1000.0 / self.original_num_steps)
        return original

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I).

        Args:
            x0: (B, ...) clean data; t: int64 (B,) chain indices; noise: like x0, standard normal.
        """
        return (
            self.gather(self.sqrt_alpha_bar, t, x0) * x0
            + self.gather(self.sqrt_one_minus_alpha_bar, t, x0) * noise
        )

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x0 = sqrt(1/alpha_bar) x_t - sqrt(1/alpha_bar - 1) eps (ADM protocol §4); (B, ...)."""
        return (
            self.gather(self.sqrt_recip_alpha_bar, t, x_t) * x_t
            - self.gather(self.sqrt_recipm1_alpha_bar, t, x_t) * eps
        )

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (sqrt(1/alpha_bar) x_t - x0) / sqrt(1/alpha_bar - 1), inverse of the above."""
        return (self.gather(self.sqrt_recip_alpha_bar, t, x_t) * x_t - x0) / self.gather(
            self.sqrt_recipm1_alpha_bar, t, x_t
        )

    def q_posterior_mean_variance(
        self, x0: Tensor, x_t: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0) (ADM protocol §4).

        Returns:
            mean (B, ...), variance (B, 1, ...), log_variance (B, 1, ...), dtype of x_t.
        """
        mean = (
            self.gather(self.posterior_mean_coef1, t, x_t) * x0
            + self.gather(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = self.gather(self.posterior_variance, t, x_t)
        log_variance = self.gather(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    def p_mean_variance(
        self,
        model_output: Tensor,
        x_t: Tensor,
        t: Tensor,
        *,
        learn_sigma: bool,
        predict_xstart: bool,
        clip_denoised: bool,
    ) -> dict[str, Tensor]:
        """The model's Gaussian p(x_{t-1} | x_t) from a raw network output (ADM protocol §4).

        Args:
            model_output: (B, 2C, ...) = [mean part, v] with ``learn_sigma``, else (B, C, ...);
                the mean part is eps (default) or x0 (``predict_xstart``).
            x_t: (B, C, ...) noisy input; t: int64 (B,) indices of this chain.
            learn_sigma: "learned range" variance from v in [-1, 1]; otherwise "fixed large".
            predict_xstart: the mean part is x0 instead of eps.
            clip_denoised: clamp the predicted x0 to [-1, 1].

        Returns:
            dict with ``mean`` (B, C, ...), ``variance`` and ``log_variance`` (broadcastable to
            x_t), ``pred_x0`` (B, C, ...; clipped if requested) and ``eps`` (B, C, ...; the eps
            implied by ``pred_x0``, as DDIM uses it).
        """
        channels = x_t.shape[1]
        expected = 2 * channels if learn_sigma else channels
        if model_output.shape[0] != x_t.shape[0] or model_output.shape[1] != expected:
            raise EvalsuiteError(
                f"model output has shape {tuple(model_output.shape)}, expected {expected} channels "
                f"for {channels}-channel input with learn_sigma={learn_sigma}"
            )
        if learn_sigma:
            mean_output, v = torch.split(model_output, channels, dim=1)
            # Learned range: log var = frac log beta_t + (1 - frac) log beta~_t (clipped), frac = (v+1)/2.
            max_log = self.gather(self.log_betas, t, x_t)
            min_log = self.gather(self.posterior_log_variance_clipped, t, x_t)
            frac = (v + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            mean_output = model_output
            # Fixed large: [beta~_1, beta_1, beta_2, ...].
            variance = self.gather(self.fixed_large_variance, t, x_t)
            log_variance = self.gather(self.fixed_large_log_variance, t, x_t)
        if predict_xstart:
            pred_x0 = mean_output
        else:
            pred_x0 = self.predict_x0_from_eps(x_t, t, mean_output)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        eps = self.predict_eps_from_x0(x_t, t, pred_x0)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_x0": pred_x0,
            "eps": eps,
        }


def make_schedule(noise_schedule: str, num_steps: int, respacing: str = "") -> DiffusionSchedule:
    """The (respaced) chain used for sampling or training (ADM protocol §4).

    Args:
        noise_schedule: "linear" or "cosine".
        num_steps: T, the number of diffusion steps the network was trained with.
        respacing: timestep respacing string (see ``space_timesteps``); "" keeps all T steps.

    Returns:
        The chain over the kept timesteps t_0 < t_1 < ... with betas
        1 - alpha_bar[t_i] / alpha_bar[t_{i-1}] (alpha_bar[t_{-1}] = 1), so alpha_bar at kept
        steps equals the original.
    """
    return respace_betas(beta_schedule(noise_schedule, num_steps), respacing)


def respace_betas(betas: np.ndarray, respacing: str = "") -> DiffusionSchedule:
    """The chain of the training betas (float64 (T,)) kept by ``respacing`` (ADM protocol §4).

    See ``make_schedule``; this is its second half, for betas that come from elsewhere (a
    diffusers scheduler config, trained betas).
    """
    betas = np.asarray(betas, dtype=np.float64)
    num_steps = len(betas)
    kept = space_timesteps(num_steps, respacing)
    if len(kept) < 2:
        raise EvalsuiteError(
            f"timestep respacing {respacing!r} keeps {len(kept)} step; a chain needs at least 2"
        )
    alpha_bar = np.cumprod(1.0 - betas)
    kept_alpha_bar = alpha_bar[kept]
    # Respaced betas: 1 - alpha_bar_t / alpha_bar_last (ADM protocol §4).
    respaced_betas = 1.0 - kept_alpha_bar / np.append(1.0, kept_alpha_bar[:-1])
    return DiffusionSchedule.from_betas(respaced_betas, kept, original_num_steps=num_steps)
