#!/usr/bin/env bash
# Rebuild evalsuite's tiny model zoo from scratch, on CPU, from the procedural shapes dataset.
#
#   bash zoo/build_zoo.sh                              # full build, ~1.75 h on 2 CPU cores
#   ZOO_QUICK=1 bash zoo/build_zoo.sh                  # 5-step smoke build into a temp folder
#
# Writes evalsuite/zoo/assets/ (checkpoints, manifest.json) and reference_stats/
# (Inception statistics of the shapes reference split). Interrupted? Run the same command again:
# every training resumes from its last saved state (train_state.pt, every 100 steps) in $ZOO_WORK.
# What is built, and why, is described in zoo/README.md.
#
# Environment: PYTHON (default .venv/bin/python), ZOO_OUT, ZOO_REFERENCE_OUT, ZOO_WORK (where
# training runs live; default ~/.cache/evalsuite/zoo-build), ZOO_MAIN_STEPS (default 28000),
# ZOO_MAIN_ANNEAL_STEPS (default 8000: the main runs' last steps lower the learning rate),
# ZOO_REFERENCE_IMAGES (default 1000), ZOO_LANES (default 2 on 2+ cores), ZOO_QUICK=1 (smoke build).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
if [[ "${ZOO_QUICK:-0}" == 1 ]]; then
    # Smoke build: a few steps of everything, written to a temporary folder (never the package).
    scratch=$(mktemp -d -t evalsuite-zoo-quick.XXXXXX)
    OUT=${ZOO_OUT:-$scratch/zoo_assets}
    REFERENCE_OUT=${ZOO_REFERENCE_OUT:-$scratch/reference_stats}
    WORK=${ZOO_WORK:-$scratch/work}
    MAIN_STEPS=5 MAIN_ANNEAL_STEPS=2 POINTS=(2 4) ABLATION_STEPS=4 CLASSIFIER_STEPS=5 JUDGE_STEPS=5
    CFG_STEPS=5 CFG_ANNEAL_STEPS=2
    REFERENCE_IMAGES=64 CHECK_IMAGES=64 CHECK_SAMPLES=4
else
    OUT=${ZOO_OUT:-evalsuite/zoo/assets}
    REFERENCE_OUT=${ZOO_REFERENCE_OUT:-reference_stats}
    WORK=${ZOO_WORK:-$HOME/.cache/evalsuite/zoo-build}
    # Main models: a constant learning rate, then a linear decay over the last
    # ZOO_MAIN_ANNEAL_STEPS. A build whose main runs have not started annealing continues them
    # when rerun with other step counts (same weights as one run of the new length); annealed
    # runs can only be finished with their own counts. The ablation table compares every variant
    # at the two training POINTS (constant learning rate up to there).
    MAIN_STEPS=${ZOO_MAIN_STEPS:-28000} MAIN_ANNEAL_STEPS=${ZOO_MAIN_ANNEAL_STEPS:-8000}
    POINTS=(600 1200) ABLATION_STEPS=1200
    CLASSIFIER_STEPS=4000 JUDGE_STEPS=800
    # Classifier-free guidance model: the conditional UNet fine-tuned with a null class.
    CFG_STEPS=1400 CFG_ANNEAL_STEPS=700
    REFERENCE_IMAGES=${ZOO_REFERENCE_IMAGES:-1000} CHECK_IMAGES=2000 CHECK_SAMPLES=100
fi
mkdir -p "$OUT" "$REFERENCE_OUT" "$WORK"
evalsuite() { "$PYTHON" -m evalsuite "$@"; }
started=$SECONDS
say() { printf '[zoo %4dm%02ds] %s\n' $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)) "$*"; }

# The baseline UNet (ADM architecture at 16x16): AdaGN, BigGAN up/down, attention at 8 and 4,
# 16 channels per head, learned-range variance, cosine schedule, T = 1000.
UNET="--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,1,1
      --attention_resolutions 8,4 --num_head_channels 16 --use_scale_shift_norm True
      --resblock_updown True --rescale_residual False --learn_sigma True --num_classes 10
      --noise_schedule cosine --diffusion_steps 1000 --dropout 0.0"
# Noise-aware classifier for guidance (the paper's: AdaGN, BigGAN down, attention pool).
CLASSIFIER="--image_size 16 --classifier_width 32 --classifier_depth 2
            --classifier_attention_resolutions 8,4 --classifier_pool attention --num_classes 10
            --noise_schedule cosine --diffusion_steps 1000"
# Judge: a clean-image classifier of another architecture and seed, used only to measure samples.
JUDGE="--image_size 16 --classifier_width 32 --classifier_depth 1
       --classifier_attention_resolutions 4 --classifier_pool adaptive
       --classifier_use_scale_shift_norm False --classifier_resblock_updown False
       --num_classes 10 --noise_schedule cosine --diffusion_steps 1000"
# Two lanes on 2+ cores (ZOO_LANES=1: one after another); lanes train without progress bars.
LANES=${ZOO_LANES:-$(( $(nproc 2>/dev/null || echo 1) >= 2 ? 2 : 1 ))}
QUIET=(); ((LANES >= 2)) && QUIET=(--quiet)
TRAINING=(--batch-size 32 --lr 1e-3 --ema-rate 0.995 --log-every 50 --state-every 100 "${QUIET[@]}")
points=$(IFS=,; echo "${POINTS[*]}")

ABLATIONS=(
    "addition|--use_scale_shift_norm False|timestep/class embedding added (no AdaGN), Table 3"
    "plain_updown|--resblock_updown False|strided-conv down / nearest+conv up instead of BigGAN blocks, Table 1"
    "attention8|--attention_resolutions 8|attention at one resolution (8) instead of 8 and 4, Table 1"
    "rescale_residual|--rescale_residual True|residual sum rescaled by 1/sqrt(2), Table 1"
)
# 1. Class-conditional and unconditional UNets (the paper's Table 4 pair). The conditional run
#    also saves the ablation baseline at the two training points (same seed as the variants).
train_cond() {
    say "class-conditional UNet: $MAIN_STEPS steps, the last $MAIN_ANNEAL_STEPS annealed"
    evalsuite train unet --out "$WORK/cond" --steps "$MAIN_STEPS" --seed 0 --save-at "$points" \
        --lr-anneal-steps "$MAIN_ANNEAL_STEPS" "${TRAINING[@]}" --flags "$UNET --class_cond True"
}
train_uncond() {
    say "unconditional UNet: $MAIN_STEPS steps, the last $MAIN_ANNEAL_STEPS annealed"
    evalsuite train unet --out "$WORK/uncond" --steps "$MAIN_STEPS" --seed 1 \
        --lr-anneal-steps "$MAIN_ANNEAL_STEPS" "${TRAINING[@]}" --flags "$UNET --class_cond False"
}
# 1b. Classifier-free guidance: the conditional UNet warm-started with a null class ∅ (its label
#     embedding row starts as the mean class row) and fine-tuned with label dropout 0.1.
train_cfg() {
    say "classifier-free guidance UNet: $CFG_STEPS steps from the conditional UNet"
    evalsuite train unet --out "$WORK/cfg" --steps "$CFG_STEPS" --seed 3 \
        --init "$WORK/cond/unet.pt" --label-dropout 0.1 --lr-anneal-steps "$CFG_ANNEAL_STEPS" \
        --batch-size 32 --lr 3e-4 --ema-rate 0.995 --log-every 50 --state-every 100 \
        "${QUIET[@]}" --flags "$UNET --class_cond True --null_class True"
}
# 2. Architecture ablations (Tables 1-3): one change each from the baseline, same seed, data
#    order, noise and budget; checkpoints at the two training points.
train_ablation() { # index into ABLATIONS
    IFS='|' read -r name change _ <<<"${ABLATIONS[$1]}"
    say "ablation $name: $ABLATION_STEPS steps"
    # The variant's flag replaces the baseline's (a flag may be given only once).
    flags=$(sed -E "s/${change%% *} [^ ]+//" <<<"$UNET --class_cond True")
    evalsuite train unet --out "$WORK/ablation_$name" --steps "$ABLATION_STEPS" --seed 0 \
        --save-at "$points" "${TRAINING[@]}" --flags "$flags $change"
}
# 3. Classifiers: noise-aware (guidance) and the clean judge.
train_classifier() {
    say "noise-aware classifier: $CLASSIFIER_STEPS steps"
    evalsuite train classifier --noised --out "$WORK/classifier" --steps "$CLASSIFIER_STEPS" \
        --seed 2 --batch-size 64 --lr 1e-3 --ema-rate 0.995 "${QUIET[@]}" --flags "$CLASSIFIER"
}
train_judge() {
    say "judge (clean classifier): $JUDGE_STEPS steps"
    evalsuite train classifier --clean --out "$WORK/judge" --steps "$JUDGE_STEPS" \
        --seed 7 --batch-size 64 --lr 1e-3 --ema-rate 0.995 "${QUIET[@]}" --flags "$JUDGE"
}
lane_a() { train_cond && train_cfg && train_ablation 0 && train_ablation 1 && train_judge; }
lane_b() { train_uncond && train_ablation 2 && train_ablation 3 && train_classifier; }

# Every training is independent: on 2+ cores they run in two lanes of one thread each (small
# models scale badly across threads); each lane's progress goes to $WORK/lane_{a,b}.log.
if ((LANES >= 2)); then
    say "training in two parallel 1-thread lanes (logs: $WORK/lane_a.log, $WORK/lane_b.log)"
    (export OMP_NUM_THREADS=1; lane_a) >"$WORK/lane_a.log" 2>&1 &
    lane_a_pid=$!
    (export OMP_NUM_THREADS=1; lane_b) >"$WORK/lane_b.log" 2>&1 &
    lane_b_pid=$!
    failed=0
    wait "$lane_a_pid" || failed=1
    wait "$lane_b_pid" || failed=1
    grep -h '^\[zoo' "$WORK/lane_a.log" "$WORK/lane_b.log" || true
    if ((failed)); then
        echo "zoo build: a training lane failed; see $WORK/lane_a.log and $WORK/lane_b.log" >&2
        exit 1
    fi
else
    lane_a
    lane_b
fi

# 4. Collect the EMA checkpoints under their zoo names (copy, then rename: atomic).
install_asset() { cp "$1" "$OUT/.$2.tmp" && mv "$OUT/.$2.tmp" "$OUT/$2"; }
install_asset "$WORK/cond/unet.pt" cond_unet.pt
install_asset "$WORK/uncond/unet.pt" uncond_unet.pt
install_asset "$WORK/cfg/unet.pt" cfg_unet.pt
install_asset "$WORK/classifier/classifier.pt" classifier.pt
install_asset "$WORK/judge/classifier.pt" judge.pt
for point in "${POINTS[@]}"; do
    install_asset "$WORK/cond/unet_step$point.pt" "ablation_baseline_step$point.pt"
    for row in "${ABLATIONS[@]}"; do
        IFS='|' read -r name _ _ <<<"$row"
        install_asset "$WORK/ablation_$name/unet_step$point.pt" "ablation_${name}_step$point.pt"
    done
done

# 5. The ablation spec (evalsuite/zoo/assets/ablation.toml, written by hand and kept in git;
#    another output folder gets a copy with its training points), the reference statistics and
#    the end-to-end checks.
if [[ ! "$OUT/ablation.toml" -ef evalsuite/zoo/assets/ablation.toml ]]; then
    sed -e "s/_step600\.pt/_step${POINTS[0]}.pt/g" -e "s/_step1200\.pt/_step${POINTS[1]}.pt/g" \
        evalsuite/zoo/assets/ablation.toml >"$OUT/ablation.toml"
fi
say "reference statistics of $REFERENCE_IMAGES reference images"
evalsuite data reference --num "$REFERENCE_IMAGES" --out "$WORK/shapes16_reference_images.npz"
evalsuite ref-stats "$WORK/shapes16_reference_images.npz" --out "$WORK/shapes16_reference.npz" --quiet
install_asset_to() { cp "$1" "$2/.$3.tmp" && mv "$2/.$3.tmp" "$2/$3"; }
install_asset_to "$WORK/shapes16_reference.npz" "$REFERENCE_OUT" shapes16_reference.npz

say "checks: judge and classifier on held-out images, judge on $CHECK_SAMPLES samples"
evalsuite data heldout --num "$CHECK_IMAGES" --out "$WORK/heldout.npz"
# Named after the model's hash: a rebuilt model gets a new check batch (an interrupted one resumes).
CHECK_BATCH="cond_samples_$(sha256sum "$OUT/cond_unet.pt" | cut -c1-12).npz"
evalsuite sample --model "$OUT/cond_unet.pt" --sampler ddpm --steps 100 --classes balanced \
    --num-samples "$CHECK_SAMPLES" --batch-size 50 --seed 0 --out "$WORK/$CHECK_BATCH" --quiet

# Accuracy checks, ablation-spec check and manifests (sha256 of every file, read by evalsuite.zoo).
ZOO_OUT="$OUT" ZOO_REFERENCE_OUT="$REFERENCE_OUT" ZOO_WORK="$WORK" CHECK_BATCH="$CHECK_BATCH" "$PYTHON" - <<'PY'
import json
import os
from pathlib import Path

import numpy as np
import torch

from evalsuite.diffusion import make_schedule
from evalsuite.models import load_checkpoint
from evalsuite.zoo import write_manifest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

out, reference_out, work = (Path(os.environ[k]) for k in ("ZOO_OUT", "ZOO_REFERENCE_OUT", "ZOO_WORK"))


def accuracy(loaded, images, labels, t=0, seed=0):
    """Top-1 accuracy of a classifier on uint8 NHWC images noised to chain index t (0 = clean)."""
    model, diffusion = loaded.model, loaded.diffusion_config
    x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    schedule = make_schedule(diffusion.noise_schedule, diffusion.diffusion_steps)
    index = torch.full((len(x0),), t)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x = schedule.q_sample(x0, index, noise) if t else x0
    with torch.no_grad():
        predicted = torch.cat([model(b, i).argmax(1) for b, i in zip(x.split(500), index.split(500))])
    return round(float((predicted.numpy() == labels).mean()), 4)


with np.load(work / "heldout.npz") as batch:
    images, labels = batch["arr_0"], batch["arr_1"]
with np.load(work / os.environ["CHECK_BATCH"]) as batch:
    samples, sample_labels = batch["arr_0"], batch["arr_1"]
judge = load_checkpoint(out / "judge.pt", "classifier")
classifier = load_checkpoint(out / "classifier.pt", "classifier")
checks = {
    "judge.pt": {"heldout_accuracy": accuracy(judge, images, labels)},
    "classifier.pt": {
        f"heldout_accuracy_t{t}": accuracy(classifier, images, labels, t) for t in (0, 250, 500, 750)
    },
    "cond_unet.pt": {"judge_accuracy_ddpm100_samples": accuracy(judge, samples, sample_labels)},
}
print(json.dumps(checks))

# ablation.toml (the spec `evalsuite ablate` runs, kept in git) must name only files built here.
spec = tomllib.loads((out / "ablation.toml").read_text())
named = [name for variant in spec["variant"] for name in variant["checkpoints"].values()]
missing = [name for name in named if not (out / name).exists()]
if missing:
    raise SystemExit(f"ablation.toml names checkpoints this build did not write: {missing}")

roles = {
    "cond_unet.pt": "class-conditional UNet",
    "uncond_unet.pt": "unconditional UNet",
    "cfg_unet.pt": "class-conditional UNet with a null class (classifier-free guidance)",
    "classifier.pt": "noise-aware classifier (guidance)",
    "judge.pt": "clean-image judge classifier (measures samples only)",
    "ablation.toml": "architecture-ablation table spec",
}
info = {}
for path in sorted(out.glob("*.pt")):
    kind = "classifier" if path.name in ("classifier.pt", "judge.pt") else "unet"
    loaded = load_checkpoint(path, kind)
    role = roles.get(path.name, f"ablation row {path.stem.rsplit('_step', 1)[0][9:]}")
    info[path.name] = {"role": role, "kind": kind, "step": loaded.step,
                       "training": loaded.extra.get("training"), **checks.get(path.name, {})}
info["ablation.toml"] = {"role": roles["ablation.toml"]}
write_manifest(out, info)
with np.load(reference_out / "shapes16_reference.npz") as stats:
    made = json.loads(str(stats["evalsuite_meta"]))
write_manifest(reference_out, {"shapes16_reference.npz": {
    "role": "reference statistics of the shapes reference split (evalsuite ref-stats)",
    "made_with": f"evalsuite data reference --num {made['num_images']} --out images.npz && "
                 "evalsuite ref-stats images.npz --out shapes16_reference.npz",
    "num_images": made["num_images"],
    "stored": made.get("stored"),
    "weights_source": made["weights_source"],
    "weights_sha256": made["weights_sha256"],
    "protocol_version": made["protocol_version"],
    "source_sha256": made["source_sha256"]}})
PY
say "done: $OUT, $REFERENCE_OUT/shapes16_reference.npz ($(du -sh "$OUT" | cut -f1) of checkpoints)"
