"""Why precision/recall move as they do on a zoo sample set: a brute-force breakdown.

For each sample batch given (ADM .npz with labels, e.g. from `evalsuite sample` at two guidance
scales with the same seed) against the zoo reference statistics, computes improved
precision/recall from the full reference x sample and sample x sample distances (evalsuite's
resample scorer, ADM convention: k = 3 counting self, squared L2, <=) and splits them by what the
samples look like:

- k-NN radii of the sample manifold (recall grows when samples spread out in feature space);
- precision of the samples the judge assigns to their requested class and of the others;
- precision of noise-texture samples (mean absolute vertical pixel difference > 25 grey levels)
  and of the clean ones;
- the contrast of the images: each image's pixels split into two colours (2-means), contrast =
  the RGB distance of the two (colours in [0, 1]). Run it on real images too (`evalsuite data
  heldout --num 500 --out real.npz`) to compare with the data;
- with --reference-images NPZ (the images behind the reference statistics, in the same order,
  e.g. `evalsuite data reference --num 1000 --out ref.npz` for the zoo's): recall split by the
  reference images' contrast, i.e. which real images the samples cover — faint (weak class
  evidence), middle or vivid ones;
- with --paired R: a paired bootstrap of the precision/recall change from the first batch to
  each later one of the same size (batches drawn with the same seed share the initial noise and
  classes of sample i, so both are resampled with the same indices; R resamples, evalsuite's
  own resample scorer). Reports the change, its standard error and 95% interval.

    Z=evalsuite/zoo/assets
    for s in 0 10; do evalsuite sample --model $Z/uncond_unet.pt --classifier $Z/classifier.pt \
        --guidance-scale $s --sampler ddim --steps ddim25 --num-samples 500 --out s$s.npz; done
    .venv/bin/python zoo/diag_zoo_pr.py s0.npz s10.npz

--reference and --judge replace the zoo's reference statistics and judge (e.g. for a zoo rebuilt
into another folder).
"""

from __future__ import annotations

import argparse

import numpy as np
from zoo_scoring import scoring_setup

from evalsuite import zoo
from evalsuite.experiments.bootstrap import SampleScorer, paired_changes
from evalsuite.pipeline.batches import open_images
from evalsuite.zoo.judge import class_agreement, judge_predictions, load_judge
from evalsuite.zoo.shapes import CONTRAST_RANGE

MIN_CONTRAST = CONTRAST_RANGE[0]  # the data's faintest images
K = 3  # ADM: the k-th smallest distance counting the point itself
JUNK_GRADIENT = 25.0
# Reference-image contrast bands for the recall breakdown: faint, middle, vivid.
CONTRAST_BANDS = ((0.0, 0.35), (0.35, 0.7), (0.7, np.inf))


def share(flags: np.ndarray, subset: np.ndarray) -> float:
    """Mean of boolean `flags` over `subset` (nan when the subset is empty)."""
    return float(flags[subset].mean()) if subset.any() else float("nan")


def two_colour_contrast(images: np.ndarray, iterations: int = 10) -> np.ndarray:
    """(N,) RGB distance between the two colours of a 2-means split of each image's pixels."""
    contrast = np.zeros(len(images))
    for i, image in enumerate(images.reshape(len(images), -1, 3).astype(np.float64) / 255):
        # Start from the pixel farthest from the mean and the pixel farthest from that one.
        first = image[((image - image.mean(0)) ** 2).sum(1).argmax()]
        second = image[((image - first) ** 2).sum(1).argmax()]
        for _ in range(iterations):
            nearer_first = ((image - first) ** 2).sum(1) <= ((image - second) ** 2).sum(1)
            if nearer_first.all():
                break
            first, second = image[nearer_first].mean(0), image[~nearer_first].mean(0)
        contrast[i] = np.linalg.norm(first - second)
    return contrast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batches", nargs="+", help="ADM sample batches (.npz with arr_1 labels)")
    parser.add_argument(
        "--paired", type=int, default=0, metavar="R", help="paired bootstrap resamples (0: off)"
    )
    parser.add_argument("--reference", help="reference statistics (default: the zoo's)")
    parser.add_argument("--judge", help="judge classifier (default: the zoo's)")
    parser.add_argument(
        "--reference-images", help="the reference statistics' images (.npz): recall by contrast"
    )
    args = parser.parse_args()
    scorers = []

    computer, _, prepared = scoring_setup(str(args.reference or zoo.reference()), ("pr",), K)
    reference, radii_reference = prepared.side.pool, prepared.radii
    judge = load_judge(args.judge or zoo.asset("judge.pt"))
    print(
        f"reference: {len(reference)} images, "
        f"median k-NN radius {np.median(np.sqrt(radii_reference)):.2f}"
    )
    bands = []
    if args.reference_images:
        with np.load(args.reference_images) as batch:
            reference_contrast = two_colour_contrast(batch["arr_0"])
            reference_labels = batch["arr_1"]
        if len(reference_contrast) != len(reference):
            raise SystemExit(
                f"--reference-images holds {len(reference_contrast)} images, the reference "
                f"statistics {len(reference)}: give the images the statistics were made from"
            )
        bands = [
            (low, high, (reference_contrast >= low) & (reference_contrast < high))
            for low, high in CONTRAST_BANDS
        ]
        print(
            "  reference images by contrast: "
            + ", ".join(f"[{low:g}, {high:g}) {members.mean():.3f}" for low, high, members in bands)
        )
    for path in args.batches:
        with np.load(path) as batch:
            images, labels = batch["arr_0"], batch["arr_1"]
        sample_scorer = SampleScorer(computer.compute(open_images(path)), prepared)
        scorers.append(sample_scorer)
        scorer = sample_scorer.pr  # the reference x sample and sample x sample distances
        features = sample_scorer.features.pool
        precision, recall = scorer.scores(np.arange(len(features)))
        print(f"{path}: N={len(images)} precision {precision:.3f} recall {recall:.3f}")
        inside = scorer.sample_in_reference
        radii = np.maximum(np.partition(scorer.self_distances, K, axis=1)[:, K], 0.0)
        if bands:
            # Which reference images the whole batch covers (recall per reference image).
            covered = scorer.reference_covered(np.arange(len(features)))
            print(
                "  recall by reference contrast: "
                + ", ".join(
                    f"[{low:g}, {high:g}) {share(covered, members):.3f}"
                    for low, high, members in bands
                )
            )
        judged = judge_predictions(judge, images)
        agree = class_agreement(judged, labels)
        if bands:
            classes = range(int(reference_labels.max()) + 1)
            print(
                "  recall by reference class: "
                + " ".join(f"{share(covered, reference_labels == c):.2f}" for c in classes)
            )
            print(
                "  precision by judged class: "
                + " ".join(f"{share(inside, judged == c):.2f}" for c in classes)
            )
        junk = np.abs(np.diff(images.astype(np.float64), axis=1)).mean((1, 2, 3)) > JUNK_GRADIENT
        print(
            f"  sample k-NN radius median {np.median(np.sqrt(radii)):.2f}, "
            f"mean {np.sqrt(radii).mean():.2f}"
        )
        print(
            f"  judge agrees on {agree.mean():.3f}: precision {share(inside, agree):.3f} "
            f"(agreeing) vs {share(inside, ~agree):.3f} (others)"
        )
        print(
            f"  noise-texture samples {junk.mean():.3f}: precision "
            f"{share(inside, junk):.3f}, clean samples {share(inside, ~junk):.3f}"
        )
        contrast = two_colour_contrast(images)
        faint = (contrast < MIN_CONTRAST) & ~junk
        print(
            f"  two-colour contrast mean {contrast.mean():.3f} (clean samples "
            f"{contrast[~junk].mean():.3f}), 10th percentile {np.quantile(contrast, 0.1):.3f}"
        )
        print(
            f"  clean samples fainter than the data's minimum contrast ({MIN_CONTRAST}): "
            f"{faint.mean():.3f}, precision {share(inside, faint):.3f} vs "
            f"{share(inside, ~faint & ~junk):.3f} for the other clean samples"
        )

    if args.paired and len(scorers) > 1:
        print_paired_changes(args.batches, scorers, args.paired)


def print_paired_changes(paths: list[str], scorers: list[SampleScorer], resamples: int) -> None:
    """Paired bootstrap of the precision/recall change from the first batch to each later one."""
    for path, scorer in zip(paths[1:], scorers[1:], strict=True):
        if scorer.num_samples != scorers[0].num_samples:
            print(
                f"{path}: not paired ({scorer.num_samples} samples, not {scorers[0].num_samples})"
            )
            continue
        changes = paired_changes(scorers[0], scorer, resamples)
        for name in ("precision", "recall"):
            c = changes[name]
            print(
                f"{paths[0]} -> {path}: {name} change {c['change']:+.3f}, paired se {c['se']:.3f} "
                f"(z = {c['z']:+.2f}), 95% interval {c['ci_low']:+.3f} .. {c['ci_high']:+.3f}"
            )


if __name__ == "__main__":
    main()
