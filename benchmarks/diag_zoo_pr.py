"""Why precision/recall move as they do on a zoo sample set: a brute-force breakdown.

For each sample batch given (ADM .npz with labels, e.g. from `evalsuite sample` at two guidance
scales with the same seed) against the zoo reference statistics, recomputes improved
precision/recall by brute force (ADM convention: k = 3 counting self, squared L2, <=) and splits
them by what the samples look like:

- k-NN radii of the sample manifold (recall grows when samples spread out in feature space);
- precision of the samples the judge assigns to their requested class and of the others;
- precision of noise-texture samples (mean absolute vertical pixel difference > 25 grey levels)
  and of the clean ones.

    Z=evalsuite/zoo_assets
    for s in 0 10; do evalsuite sample --model $Z/uncond_unet.pt --classifier $Z/classifier.pt \
        --guidance-scale $s --sampler ddim --steps ddim25 --num-samples 500 --out s$s.npz; done
    .venv/bin/python benchmarks/diag_zoo_pr.py s0.npz s10.npz
"""

from __future__ import annotations

import argparse

import numpy as np

from evalsuite import zoo
from evalsuite.features import (
    InceptionFeatureExtractor,
    extract_features,
    resolve_inception_weights,
)
from evalsuite.judge import class_agreement, judge_predictions, load_judge

K = 3  # ADM: the k-th smallest distance counting the point itself
JUNK_GRADIENT = 25.0


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T).clip(0)


def kth_radii(points: np.ndarray) -> np.ndarray:
    return np.sort(squared_distances(points, points), axis=1)[:, K]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("batches", nargs="+", help="ADM sample batches (.npz with arr_1 labels)")
    args = parser.parse_args()

    extractor = InceptionFeatureExtractor(resolve_inception_weights(None))
    with np.load(zoo.reference()) as stats:
        reference = stats[[k for k in stats.files if "pool" in k][0]].astype(np.float64)
    judge = load_judge(zoo.asset("judge.pt"))
    reference_radii = kth_radii(reference)
    print(
        f"reference: {len(reference)} images, median k-NN radius {np.median(np.sqrt(reference_radii)):.2f}"
    )
    for path in args.batches:
        with np.load(path) as batch:
            images, labels = batch["arr_0"], batch["arr_1"]
        features = extract_features(iter([images]), extractor, progress=False)["pool"]
        features = features.astype(np.float64)
        radii = kth_radii(features)
        distances = squared_distances(features, reference)
        inside = (distances <= reference_radii[None]).any(1)
        covered = (distances <= radii[:, None]).any(0)
        agree = class_agreement(judge_predictions(judge, images), labels)
        junk = np.abs(np.diff(images.astype(np.float64), axis=1)).mean((1, 2, 3)) > JUNK_GRADIENT
        print(f"{path}: N={len(images)} precision {inside.mean():.3f} recall {covered.mean():.3f}")
        print(
            f"  sample k-NN radius median {np.median(np.sqrt(radii)):.2f}, "
            f"mean {np.sqrt(radii).mean():.2f}"
        )
        print(
            f"  judge agrees on {agree.mean():.3f}: precision {inside[agree].mean():.3f} "
            f"(agreeing) vs {inside[~agree].mean():.3f} (others)"
        )
        print(
            f"  noise-texture samples {junk.mean():.3f}: precision "
            f"{inside[junk].mean() if junk.any() else float('nan'):.3f}, "
            f"clean samples {inside[~junk].mean():.3f}"
        )


if __name__ == "__main__":
    main()
