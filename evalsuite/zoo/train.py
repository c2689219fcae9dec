"""Minimal, reproducible trainer for the tiny model zoo: ADM UNets and (noise-aware) classifiers.

What it trains (ADM protocol §4, §6):
- `train_unet`: the IDDPM hybrid objective (eps MSE + variational bound with the mean detached,
  learned-range variance) at timesteps drawn uniformly over the T training steps, AdamW at a
  constant learning rate (optionally lowered linearly over the run's last steps), an exponential
  moving average (EMA) of the weights. Class-conditional
  models get the labels of their images; a model with a null class (classifier-free guidance)
  sees its label replaced by the null class ∅ with probability `label_dropout` (default 0.1, the
  CFG paper's p_uncond). `init` warm-starts from another checkpoint's weights (e.g. a plain
  conditional model, whose label embedding gains the ∅ row as the mean of its class rows).
- `train_classifier`: with `noised=True` the noise-aware classifier of the paper, trained with
  cross-entropy on x_t ~ q(x_t | x_0) at uniformly drawn t and given the original timestep;
  with `noised=False` a clean-image classifier (always t = 0 on the unnoised x_0): the "judge"
  that only measures samples and never guides them.

Data: images of the procedural shapes dataset's train split (`evalsuite.zoo.shapes`), rendered on the
fly at indices drawn uniformly from a finite training set of TRAIN_SET_SIZE images.

Reproducibility: the model is initialised from `seed`; everything random at step k (batch
indices, timesteps, noise, dropout) comes from a generator seeded by (seed, k) only, and global
RNG state is never left changed. The output folder holds a resumable state (weights, EMA,
optimizer, step), saved every `state_every` steps and at the end; rerunning the same call after
an interrupt (Ctrl-C, SIGKILL) continues from it and ends with the same weights as an
uninterrupted run. Layout of `out/`:

    config.json          model, diffusion and training configs of the run
    train_state.pt       resumable state (raw weights, EMA weights, optimizer, step)
    log.jsonl            one JSON line per `log_every` steps: step, mean losses, seconds/step
    {kind}.pt            final checkpoint (EMA weights), `evalsuite.models.save_checkpoint` format
    {kind}_step{N}.pt    extra checkpoints at the steps in `save_at`

Checkpoints hold the EMA weights as their `state_dict` (extra["weights"] == "ema"), so the
files stay fp32-EMA-only and `load_checkpoint` loads the averaged model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evalsuite.diffusion import make_schedule, sample_timesteps, training_losses
from evalsuite.models import (
    ClassifierConfig,
    DiffusionConfig,
    UNetConfig,
    build_model,
    config_to_dict,
    save_checkpoint,
)
from evalsuite.runtime.cache import atomic_path
from evalsuite.runtime.errors import EvalsuiteError
from evalsuite.zoo.shapes import CLASS_NAMES, SPLITS, render_shapes

# Datasets the trainer can draw from.
DATASETS = ("shapes",)
# Size of the finite training set the batches are drawn from (CIFAR-10's size).
TRAIN_SET_SIZE = 50_000
STATE_NAME = "train_state.pt"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"

# Per-step losses/metrics: a scalar to optimise and the per-sample values to log.
LossFn = Callable[[nn.Module, Tensor, Tensor, torch.Generator], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Everything besides the configs that determines the weights after a given step.

    A run can only be resumed with the same options (the number of steps may grow, and the
    learning-rate schedule may change where it has not yet acted: see `LRSchedule`).
    `task` is "unet", "classifier_noised" or "classifier_clean".
    """

    task: str
    batch_size: int
    lr: float
    weight_decay: float
    ema_rate: float
    seed: int
    dataset: str
    image_size: int
    train_set_size: int = TRAIN_SET_SIZE
    label_dropout: float = 0.0
    init_sha256: str | None = None


def train_unet(
    model_config: UNetConfig,
    diffusion_config: DiffusionConfig,
    *,
    out: str | Path,
    steps: int,
    batch_size: int,
    lr: float = 3e-4,
    ema_rate: float = 0.995,
    lr_anneal_steps: int = 0,
    seed: int = 0,
    dataset: str = "shapes",
    image_size: int | None = None,
    weight_decay: float = 0.0,
    save_at: Sequence[int] = (),
    log_every: int = 50,
    state_every: int = 100,
    resume: bool = True,
    progress: bool = True,
    label_dropout: float | None = None,
    init: str | Path | None = None,
) -> Path:
    """Train an ADM UNet with the IDDPM hybrid loss; returns the path of `out/unet.pt`.

    Args:
        model_config, diffusion_config: architecture and diffusion (training chain: all
            `diffusion_steps`, `noise_schedule`; `timestep_respacing` is ignored here).
        out: output folder (see the module docstring for its layout).
        steps: total optimizer steps of the run (a resumed run continues up to it).
        batch_size: images per step.
        lr, weight_decay: AdamW learning rate (constant) and weight decay.
        lr_anneal_steps: if > 0, the last `lr_anneal_steps` steps of the run lower the learning
            rate linearly from `lr` to `lr / lr_anneal_steps` (constant before them).
        ema_rate: EMA decay; the decay at update n is min(ema_rate, (1+n)/(10+n)) so that short
            runs are not dominated by the initial weights (0.995 ~ averaging the last 200 steps).
        seed: model initialisation and every per-step draw.
        dataset, image_size: "shapes"; image_size defaults to (and must equal) the model's.
        save_at: steps at which to also write `unet_step{N}.pt` (e.g. the two training points
            of the paper's ablation tables).
        log_every, state_every: steps between log lines / resumable states.
        resume: continue from `out/train_state.pt` if present (else start over).
        progress: show a tqdm bar.
        label_dropout: probability that a training label is replaced by the null class ∅
            (classifier-free guidance; needs `null_class`). None: 0.1 with a null class, else 0.
        init: warm start from this checkpoint's (EMA) weights instead of the seed's
            initialisation; its architecture must equal this one's, except that a checkpoint
            without a null class may warm-start a model with one (∅'s row = mean class row).
    """
    if not isinstance(model_config, UNetConfig) or model_config.is_upsampler:
        raise EvalsuiteError(
            "train_unet trains base ADM UNets: pass a UNetConfig without small_size"
        )
    if model_config.learn_sigma != diffusion_config.learn_sigma:
        raise EvalsuiteError(
            f"learn_sigma differs between the UNet config ({model_config.learn_sigma}) and the "
            f"diffusion config ({diffusion_config.learn_sigma}); set --learn_sigma once for both"
        )
    if diffusion_config.use_kl or diffusion_config.rescale_learned_sigmas:
        raise EvalsuiteError(
            "only the hybrid loss (use_kl=False, rescale_learned_sigmas=False) is implemented"
        )
    _check_classes(model_config.num_classes if model_config.class_cond else None, "UNet")
    if label_dropout is None:
        label_dropout = 0.1 if model_config.null_class else 0.0
    if not 0.0 <= label_dropout < 1.0:
        raise EvalsuiteError(f"--label-dropout must be in [0, 1), got {label_dropout}")
    if label_dropout > 0 and not model_config.null_class:
        raise EvalsuiteError(
            f"--label-dropout {label_dropout} needs a model with a null class; add "
            f"--null_class True to the flags (or use --label-dropout 0)"
        )
    initial = None if init is None else _initial_weights(Path(init), model_config)
    schedule = make_schedule(diffusion_config.noise_schedule, diffusion_config.diffusion_steps)
    null_label = model_config.null_label

    def loss_fn(
        model: nn.Module, x0: Tensor, labels: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        # Uniform t and Gaussian noise, then the hybrid loss (ADM protocol §4).
        t_index = sample_timesteps(x0.shape[0], schedule.num_steps, generator)
        noise = torch.randn(x0.shape, generator=generator)
        if label_dropout > 0:
            # Classifier-free guidance training: each label becomes ∅ with p = label_dropout
            # (drawn after t and noise, so those match a run without dropout).
            dropped = torch.rand(x0.shape[0], generator=generator) < label_dropout
            labels = torch.where(dropped, torch.full_like(labels, null_label), labels)
        losses = training_losses(
            model,
            schedule,
            x0,
            t_index,
            noise=noise,
            learn_sigma=diffusion_config.learn_sigma,
            predict_xstart=diffusion_config.predict_xstart,
            model_kwargs={"y": labels} if model_config.class_cond else None,
            rescale_timesteps=diffusion_config.rescale_timesteps,
        )
        return losses["loss"].mean(), losses

    options = TrainOptions(
        task="unet",
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        ema_rate=ema_rate,
        seed=seed,
        dataset=dataset,
        image_size=model_config.image_size if image_size is None else image_size,
        label_dropout=float(label_dropout),
        init_sha256=None if initial is None else initial[1],
    )
    return _train(
        "unet",
        model_config,
        diffusion_config,
        loss_fn,
        options,
        out=Path(out),
        steps=steps,
        save_at=save_at,
        lr_anneal_steps=lr_anneal_steps,
        log_every=log_every,
        state_every=state_every,
        resume=resume,
        progress=progress,
        initial_state=None if initial is None else initial[0],
    )


def _initial_weights(path: Path, model_config: UNetConfig) -> tuple[dict[str, Tensor], str]:
    """Warm-start weights for `model_config` from an evalsuite UNet checkpoint, and its sha256.

    The checkpoint's architecture must equal `model_config` except for `null_class`: a model
    without a null class may start one that has it, the ∅ row of the label embedding being the
    mean of the class rows (the average conditioning, a neutral start for the unconditional half).
    """
    from evalsuite.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(path, "unet")
    source = loaded.model_config
    if not isinstance(source, UNetConfig):
        raise EvalsuiteError(f"--init {path}: not a UNet checkpoint")
    wanted = dataclasses.replace(model_config, null_class=source.null_class)
    if source != wanted:
        differences = [
            f"{f.name} (checkpoint {getattr(source, f.name)!r}, flags {getattr(wanted, f.name)!r})"
            for f in dataclasses.fields(source)
            if getattr(source, f.name) != getattr(wanted, f.name)
        ]
        raise EvalsuiteError(
            f"--init {path} has another architecture: {'; '.join(differences)}; warm-start "
            f"only from a checkpoint of the same architecture"
        )
    if source.null_class and not model_config.null_class:
        raise EvalsuiteError(
            f"--init {path} has a null class but the flags do not; add --null_class True"
        )
    state = {
        key: value.detach().clone().float() for key, value in loaded.model.state_dict().items()
    }
    if model_config.null_class and not source.null_class:
        rows = state["label_emb.weight"]
        state["label_emb.weight"] = torch.cat([rows, rows.mean(dim=0, keepdim=True)])
    return state, loaded.sha256


def train_classifier(
    classifier_config: ClassifierConfig,
    diffusion_config: DiffusionConfig,
    *,
    noised: bool,
    out: str | Path,
    steps: int,
    batch_size: int,
    lr: float = 3e-4,
    ema_rate: float = 0.995,
    lr_anneal_steps: int = 0,
    seed: int = 0,
    dataset: str = "shapes",
    image_size: int | None = None,
    weight_decay: float = 0.0,
    save_at: Sequence[int] = (),
    log_every: int = 50,
    state_every: int = 100,
    resume: bool = True,
    progress: bool = True,
) -> Path:
    """Train a classifier with cross-entropy; returns the path of `out/classifier.pt`.

    noised=True: the noise-aware classifier p(y | x_t, t) of classifier guidance, on
    x_t = q_sample(x_0, t, noise) at t uniform over the `diffusion_steps` training steps, given
    the original timestep. noised=False: a clean-image classifier (t = 0, x_0 unnoised), the
    judge used to measure samples. Other arguments as in `train_unet`; the log holds loss and
    accuracy.
    """
    if not isinstance(classifier_config, ClassifierConfig):
        raise EvalsuiteError("train_classifier needs a ClassifierConfig")
    _check_classes(classifier_config.num_classes, "classifier")
    schedule = make_schedule(diffusion_config.noise_schedule, diffusion_config.diffusion_steps)

    def loss_fn(
        model: nn.Module, x0: Tensor, labels: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if noised:
            # Noise-aware classifier: x_t ~ q(x_t | x_0) at uniform t (ADM protocol §5).
            t_index = sample_timesteps(x0.shape[0], schedule.num_steps, generator)
            noise = torch.randn(x0.shape, generator=generator)
            x = schedule.q_sample(x0, t_index, noise)
            timesteps = schedule.network_timesteps(t_index)
        else:
            x = x0
            timesteps = torch.zeros(x0.shape[0], dtype=torch.int64)
        logits = model(x, timesteps)
        loss = F.cross_entropy(logits, labels, reduction="none")
        accuracy = (logits.argmax(dim=1) == labels).float()
        return loss.mean(), {"loss": loss, "accuracy": accuracy}

    options = TrainOptions(
        task="classifier_noised" if noised else "classifier_clean",
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        ema_rate=ema_rate,
        seed=seed,
        dataset=dataset,
        image_size=classifier_config.image_size if image_size is None else image_size,
    )
    return _train(
        "classifier",
        classifier_config,
        diffusion_config,
        loss_fn,
        options,
        out=Path(out),
        steps=steps,
        save_at=save_at,
        lr_anneal_steps=lr_anneal_steps,
        log_every=log_every,
        state_every=state_every,
        resume=resume,
        progress=progress,
    )


def _check_classes(num_classes: int | None, what: str) -> None:
    if num_classes is not None and num_classes != len(CLASS_NAMES):
        raise EvalsuiteError(
            f"the {what} has num_classes={num_classes}, but the shapes dataset has "
            f"{len(CLASS_NAMES)} classes; pass --num_classes {len(CLASS_NAMES)}"
        )


def _check_options(
    options: TrainOptions,
    model_config: UNetConfig | ClassifierConfig,
    *,
    steps: int,
    save_at: Sequence[int],
    log_every: int,
    state_every: int,
) -> None:
    if options.dataset not in DATASETS:
        raise EvalsuiteError(
            f"unknown dataset {options.dataset!r}; expected one of {', '.join(DATASETS)}"
        )
    if options.image_size != model_config.image_size:
        raise EvalsuiteError(
            f"image size {options.image_size} differs from the model's image_size "
            f"{model_config.image_size}; train at the model's resolution"
        )
    for name, value in (
        ("steps", steps),
        ("batch size", options.batch_size),
        ("log_every", log_every),
        ("state_every", state_every),
    ):
        if value < 1:
            raise EvalsuiteError(f"{name} must be >= 1, got {value}")
    if not (options.lr > 0 and math.isfinite(options.lr)):
        raise EvalsuiteError(f"learning rate must be a positive number, got {options.lr}")
    if not options.weight_decay >= 0:
        raise EvalsuiteError(f"weight decay must be >= 0, got {options.weight_decay}")
    if not 0.0 <= options.ema_rate < 1.0:
        raise EvalsuiteError(f"EMA rate must be in [0, 1), got {options.ema_rate}")
    outside = [point for point in save_at if not 1 <= point <= steps]
    if outside:
        raise EvalsuiteError(
            f"save_at steps {outside} are outside 1..{steps}; pick steps the run reaches"
        )


def _step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, step): batch indices, t, noise, dropout."""
    words = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    generator = torch.Generator()
    generator.manual_seed((int(words[0]) << 31) ^ int(words[1]))
    return generator


def _batch(options: TrainOptions, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Training images at uniformly drawn indices: (x0 float32 (B,3,H,W) in [-1,1], labels (B,))."""
    indices = torch.randint(0, options.train_set_size, (options.batch_size,), generator=generator)
    images, labels = render_shapes(
        indices.numpy(), seed=SPLITS["train"], image_size=options.image_size
    )
    x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x0.contiguous(), torch.from_numpy(labels)


def _update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    # ema <- decay * ema + (1 - decay) * weights, over every floating-point tensor.
    with torch.no_grad():
        for ema_value, value in zip(
            ema_model.state_dict().values(), model.state_dict().values(), strict=True
        ):
            if ema_value.is_floating_point():
                ema_value.lerp_(value, 1.0 - decay)
            else:
                ema_value.copy_(value)


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n")


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        torch.save(state, temporary)


def _trim_log(path: Path, last_step: int) -> None:
    """Drop log lines written after the resumed step (they will be written again)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= last_step
    ]
    with atomic_path(path) as temporary:
        temporary.write_text("".join(line + "\n" for line in kept))


@dataclass(frozen=True)
class LRSchedule:
    """Learning-rate factor per step: 1, then a linear decay over the last `anneal_steps`."""

    steps: int
    anneal_steps: int = 0

    @property
    def anneal_start(self) -> float:
        """The last step at full learning rate (infinite without annealing)."""
        return self.steps - self.anneal_steps if self.anneal_steps else math.inf

    def factor(self, step: int) -> float:
        """Factor of the base learning rate at (1-based) step `step`."""
        if step <= self.anneal_start:
            return 1.0
        return (self.steps - step + 1) / self.anneal_steps

    def agrees_until(self, other: LRSchedule, step: int) -> bool:
        """Whether both schedules give the same factor at every step up to `step`."""
        return self == other or min(self.anneal_start, other.anneal_start) >= step


def _load_state(
    path: Path,
    options: TrainOptions,
    configs: dict[str, Any],
    schedule: LRSchedule,
) -> dict[str, Any]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    recorded = {"options": state["options"], **state["configs"]}
    wanted = {"options": dataclasses.asdict(options), **configs}
    # A key a state predates (label_dropout, null_class, ...) held its neutral default then.
    neutral = (None, False, 0.0)
    differences = [
        f"{group}.{key} (saved {recorded[group].get(key)!r}, given {value!r})"
        for group in wanted
        for key, value in wanted[group].items()
        if recorded[group].get(key, value if value in neutral else None) != value
    ]
    if differences:
        raise EvalsuiteError(
            f"{path} belongs to a run with other settings: {'; '.join(differences)}; "
            f"use another output folder or disable resuming to start over"
        )
    if state["step"] > schedule.steps:
        raise EvalsuiteError(
            f"{path} is already at step {state['step']}, past the requested {schedule.steps} steps; "
            f"ask for at least {state['step']} steps or use another output folder"
        )
    # States written before learning-rate annealing existed ran at a constant rate.
    saved = LRSchedule(**state.get("lr_schedule", {"steps": state["step"]}))
    if not saved.agrees_until(schedule, state["step"]):
        raise EvalsuiteError(
            f"{path} was trained with another learning-rate schedule up to its step "
            f"{state['step']} (run of {saved.steps} steps, the last {saved.anneal_steps} "
            f"annealed); resume it with --steps {saved.steps} --lr-anneal-steps "
            f"{saved.anneal_steps}, anneal only after step {state['step']}, or use another "
            f"output folder"
        )
    return state


def _train(
    kind: str,
    model_config: UNetConfig | ClassifierConfig,
    diffusion_config: DiffusionConfig,
    loss_fn: LossFn,
    options: TrainOptions,
    *,
    out: Path,
    steps: int,
    save_at: Sequence[int],
    lr_anneal_steps: int,
    log_every: int,
    state_every: int,
    resume: bool,
    progress: bool,
    initial_state: dict[str, Tensor] | None = None,
) -> Path:
    from tqdm import tqdm

    _check_options(
        options,
        model_config,
        steps=steps,
        save_at=save_at,
        log_every=log_every,
        state_every=state_every,
    )
    if not 0 <= lr_anneal_steps <= steps:
        raise EvalsuiteError(
            f"lr_anneal_steps must be in 0..{steps} (the run's steps), got {lr_anneal_steps}"
        )
    lr_schedule = LRSchedule(steps, lr_anneal_steps)
    out.mkdir(parents=True, exist_ok=True)
    state_path, log_path, final_path = out / STATE_NAME, out / LOG_NAME, out / f"{kind}.pt"
    configs = {
        "model_config": config_to_dict(model_config),
        "diffusion_config": config_to_dict(diffusion_config),
    }

    # Initialisation from the seed, without touching the global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options.seed)
        model = build_model(model_config)
    if initial_state is not None:
        model.load_state_dict(initial_state)
    model.train()
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=options.lr, weight_decay=options.weight_decay
    )
    start_step = 0
    if resume and state_path.exists():
        state = _load_state(state_path, options, configs, lr_schedule)
        model.load_state_dict(state["model"])
        ema_model.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        start_step = state["step"]
        _trim_log(log_path, start_step)
    else:
        # Starting over: nothing of an earlier run in this folder may survive.
        for stale in [state_path, log_path, final_path, *out.glob(f"{kind}_step*.pt")]:
            stale.unlink(missing_ok=True)
    missed = [
        point
        for point in save_at
        if point <= start_step and not _step_path(out, kind, point).exists()
    ]
    if missed:
        raise EvalsuiteError(
            f"cannot write the step {missed} checkpoints: the run resumes from step {start_step}; "
            f"disable resuming to train from scratch"
        )
    training = {**dataclasses.asdict(options), "lr_anneal_steps": lr_anneal_steps}
    _write_json(out / CONFIG_NAME, {**configs, "training": {**training, "steps": steps}})

    def extra(step: int) -> dict[str, Any]:
        # A snapshot before annealing starts holds the weights of a constant-rate run of `step`
        # steps; one taken while annealing says which run and schedule it is a point of.
        if step == steps:
            recipe = {**training, "steps": steps}
        elif step <= lr_schedule.anneal_start:
            recipe = {**training, "steps": step, "lr_anneal_steps": 0}
        else:
            recipe = {**training, "steps": step, "run_steps": steps}
        return {"weights": "ema", "training": recipe}

    def save_state(step: int) -> None:
        _save_state(
            state_path,
            {
                "step": step,
                "lr_schedule": dataclasses.asdict(lr_schedule),
                "options": dataclasses.asdict(options),
                "configs": configs,
                "model": model.state_dict(),
                "ema": ema_model.state_dict(),
                "optimizer": optimizer.state_dict(),
            },
        )

    sums: dict[str, float] = {}
    window_steps, window_start = 0, time.perf_counter()
    bar = tqdm(total=steps, initial=start_step, disable=not progress, desc=f"train {kind}")
    for step in range(start_step + 1, steps + 1):
        # Step k draws its batch, timesteps, noise and dropout from (seed, k) only.
        generator = _step_generator(options.seed, step)
        x0, labels = _batch(options, generator)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            loss, metrics = loss_fn(model, x0, labels, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if not torch.isfinite(loss):
            raise EvalsuiteError(
                f"the loss became {loss.item()} at step {step}; lower the learning rate"
            )
        for group in optimizer.param_groups:
            group["lr"] = options.lr * lr_schedule.factor(step)
        optimizer.step()
        # EMA with warm-up: decay min(ema_rate, (1+n)/(10+n)) at update n.
        _update_ema(ema_model, model, min(options.ema_rate, step / (step + 9)))

        for name, values in metrics.items():
            sums[name] = sums.get(name, 0.0) + values.detach().double().mean().item()
        window_steps += 1
        bar.update(1)
        if step % log_every == 0 or step == steps:
            elapsed = time.perf_counter() - window_start
            record = {name: total / window_steps for name, total in sums.items()}
            record = {"step": step, **record, "seconds_per_step": elapsed / window_steps}
            with open(log_path, "a") as log:
                log.write(json.dumps(record) + "\n")
            bar.set_postfix({"loss": f"{record['loss']:.4f}"})
            sums, window_steps, window_start = {}, 0, time.perf_counter()
        if step in save_at:
            save_checkpoint(
                _step_path(out, kind, step),
                ema_model,
                model_config,
                diffusion_config,
                kind=kind,
                extra=extra(step),
                step=step,
            )
        if step % state_every == 0 or step == steps:
            save_state(step)
    bar.close()
    if start_step < steps or not final_path.exists():
        save_checkpoint(
            final_path,
            ema_model,
            model_config,
            diffusion_config,
            kind=kind,
            extra=extra(steps),
            step=steps,
        )
    return final_path


def _step_path(out: Path, kind: str, step: int) -> Path:
    return out / f"{kind}_step{step}.pt"
