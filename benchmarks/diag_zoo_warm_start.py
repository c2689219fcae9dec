"""An unconditional UNet warm-started from the class-conditional one: is the coverage gap capacity?

The zoo's unconditional UNet covers the angular classes at half the conditional model's rate
(`RESULTS_zoo.md`). If that were a matter of training, an unconditional run that starts from the
conditional model's weights, which do draw corners, should keep them. This writes the start of
such a run: a `train_state.pt` at step 0 whose model and EMA are the conditional checkpoint's
weights without the label embedding, with the embedding's mean over the classes added to the
time embedding's last bias (so the starting network sees the average class instead of none).
`evalsuite train unet` with the zoo's `$UNET` flags, `--class_cond False` and the options given
here then continues it:

    .venv/bin/python benchmarks/diag_zoo_warm_start.py --out runs/warm --lr 1e-3 --steps 6000
    evalsuite train unet --out runs/warm --steps 6000 --lr-anneal-steps 6000 --seed 1 \
        --batch-size 32 --lr 1e-3 --ema-rate 0.995 --save-at 2000 --flags "$UNET --class_cond False"

(the trainer checks that its options match the state's: the learning rate, the seed and the
schedule given here must be those of the command.)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from evalsuite import zoo
from evalsuite.models import build_model, load_checkpoint
from evalsuite.models.config import config_to_dict
from evalsuite.zoo.train import STATE_NAME, LRSchedule, TrainOptions, _save_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cond", type=Path, default=None, help="default: the zoo's cond_unet.pt")
    parser.add_argument("--out", type=Path, required=True, help="the training run's folder")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, required=True, help="the run's --steps")
    parser.add_argument("--anneal-steps", type=int, default=None, help="default: all of them")
    parser.add_argument("--seed", type=int, default=1, help="the run's --seed")
    args = parser.parse_args()

    cond = load_checkpoint(args.cond or zoo.asset("cond_unet.pt"), "unet")
    config = dataclasses.replace(cond.model_config, class_cond=False)
    state_dict = dict(cond.model.state_dict())
    label = state_dict.pop("label_emb.weight")
    state_dict["time_embed.2.bias"] = state_dict["time_embed.2.bias"] + label.mean(0)
    model = build_model(config)
    model.load_state_dict(state_dict)

    options = TrainOptions(
        task="unet",
        batch_size=32,
        lr=args.lr,
        weight_decay=0.0,
        ema_rate=0.995,
        seed=args.seed,
        dataset="shapes",
        image_size=config.image_size,
    )
    anneal = args.steps if args.anneal_steps is None else args.anneal_steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    state = {
        "step": 0,
        "lr_schedule": dataclasses.asdict(LRSchedule(args.steps, anneal)),
        "options": dataclasses.asdict(options),
        "configs": {
            "model_config": config_to_dict(config),
            "diffusion_config": config_to_dict(cond.diffusion_config),
        },
        "model": model.state_dict(),
        "ema": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    _save_state(args.out / STATE_NAME, state)  # the trainer's own atomic write
    print(f"wrote {args.out / STATE_NAME}: step 0, {options}")


if __name__ == "__main__":
    main()
