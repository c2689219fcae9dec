"""The procedural shapes dataset: determinism per index, split independence, class/colour balance."""

from __future__ import annotations

import numpy as np
import pytest

from evalsuite.runtime.errors import EvalsuiteError
from evalsuite.zoo.shapes import (
    CLASS_NAMES,
    CONTRAST_RANGE,
    SPLITS,
    _draw_parameters,
    make_shapes,
    make_split,
    render_shapes,
    write_adm_batch,
)


def test_shapes_and_dtypes() -> None:
    images, labels = make_shapes(23, seed=3, image_size=16)
    assert images.shape == (23, 16, 16, 3) and images.dtype == np.uint8
    assert labels.shape == (23,) and labels.dtype == np.int64
    images32, _ = make_shapes(4, seed=3, image_size=32)
    assert images32.shape == (4, 32, 32, 3)


def test_slice_equals_call_with_start_offset() -> None:
    # Image i depends only on (seed, start + i): chunking must not change a single pixel.
    images, labels = make_shapes(30, seed=11)
    part_images, part_labels = make_shapes(12, seed=11, start=17)
    np.testing.assert_array_equal(part_images, images[17:29])
    np.testing.assert_array_equal(part_labels, labels[17:29])
    again, _ = make_shapes(30, seed=11)
    np.testing.assert_array_equal(again, images)


def test_render_at_arbitrary_indices_matches_contiguous_render() -> None:
    images, labels = make_shapes(40, seed=4)
    indices = np.array([33, 2, 2, 17, 39, 0])
    picked, picked_labels = render_shapes(indices, seed=4)
    np.testing.assert_array_equal(picked, images[indices])
    np.testing.assert_array_equal(picked_labels, labels[indices])


def test_labels_round_robin_and_all_classes_present() -> None:
    assert len(CLASS_NAMES) == 10 and len(set(CLASS_NAMES)) == 10
    _, labels = make_shapes(25, seed=0, start=5)
    np.testing.assert_array_equal(labels, np.arange(5, 30) % 10)
    _, labels = make_split("reference", 10)
    assert sorted(labels.tolist()) == list(range(10))


def test_splits_are_disjoint() -> None:
    assert len(set(SPLITS.values())) == len(SPLITS)
    by_split = {name: make_split(name, 20)[0] for name in SPLITS}
    names = list(SPLITS)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            # Same index, different split: a different image at every index.
            differs = (by_split[first] != by_split[second]).any(axis=(1, 2, 3))
            assert differs.all(), (first, second)


def test_images_are_drawn_not_blank() -> None:
    images, _ = make_shapes(50, seed=5)
    # Each image holds a foreground shape on a background: a wide spread of pixel values.
    pixels = images.reshape(50, -1, 3).astype(np.int64)
    spread = (pixels.max(axis=1) - pixels.min(axis=1)).max(axis=1)
    # The faintest pair (contrast 0.15) still differs by >= 0.15 / sqrt(3) * 255 = 22 levels in
    # some channel, less a margin for the pixel noise (std 3).
    assert (spread > 12).all()
    assert np.median(spread) > 60
    # Pose varies: no two images identical.
    assert len({image.tobytes() for image in images}) == 50


def test_colour_carries_no_class_information() -> None:
    images, labels = make_shapes(2000, seed=7)
    mean_colour = images.reshape(2000, -1, 3).mean(axis=1)
    overall = mean_colour.mean(axis=0)
    # 200 images per class; per-image mean-colour std is ~50 levels, so a class mean is within
    # ~3.5 levels of the overall mean (1 sigma); 15 levels is > 4 sigma.
    for label in range(10):
        class_mean = mean_colour[labels == label].mean(axis=0)
        assert np.abs(class_mean - overall).max() < 15.0, (CLASS_NAMES[label], class_mean)
    # Colours vary a lot within each class.
    for label in range(10):
        assert mean_colour[labels == label].std(axis=0).min() > 25.0


def test_classes_differ_in_shape() -> None:
    # Foreground fraction per class (the shape's area), measured on 32x32 renders: a disc covers
    # more than a ring, a bar less than a square — a shape-only property of the labels.
    images, labels = make_shapes(400, seed=2, image_size=32)
    flat = images.reshape(400, -1, 3).astype(np.float64)
    corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1]].astype(np.float64).mean(axis=1)
    distance_to_background = np.linalg.norm(flat - corners[:, None], axis=2)
    area = (distance_to_background > 40).mean(axis=1)
    mean_area = {CLASS_NAMES[c]: area[labels == c].mean() for c in range(10)}
    assert mean_area["disc"] > mean_area["ring"]
    assert mean_area["square"] > mean_area["bar"]
    assert mean_area["disc"] > mean_area["two_dots"]


def test_bad_input() -> None:
    with pytest.raises(EvalsuiteError, match="unknown split"):
        make_split("validation", 4)
    with pytest.raises(EvalsuiteError, match=">= 0"):
        make_shapes(-1, seed=0)


def test_write_adm_batch(tmp_path) -> None:
    images, labels = make_shapes(7, seed=1)
    path = write_adm_batch(tmp_path / "sub" / "batch.npz", images, labels)
    with np.load(path) as batch:
        assert sorted(batch.files) == ["arr_0", "arr_1"]
        np.testing.assert_array_equal(batch["arr_0"], images)
        assert batch["arr_1"].dtype == np.int64
        np.testing.assert_array_equal(batch["arr_1"], labels)
    # Atomic write: no temporary file left beside the batch.
    assert [p.name for p in path.parent.iterdir()] == ["batch.npz"]
    with pytest.raises(EvalsuiteError, match="uint8"):
        write_adm_batch(tmp_path / "bad.npz", images.astype(np.float32), labels)


def test_class_evidence_strength_varies_over_the_contrast_range() -> None:
    # Each image's foreground/background contrast follows its own uniform target over
    # CONTRAST_RANGE, so faint (weak-evidence) and vivid images both occur in every class.
    low, high = CONTRAST_RANGE
    params = np.stack([_draw_parameters(3, index, 16)[0] for index in range(3000)])
    contrast = np.linalg.norm(params[:, 4:7] - params[:, 7:10], axis=1)
    assert contrast.min() >= low
    for label in range(len(CLASS_NAMES)):
        of_class = contrast[np.arange(3000) % len(CLASS_NAMES) == label]
        assert (of_class < 0.35).mean() > 0.08  # ~15% overall
        assert (of_class > 0.8).mean() > 0.1  # ~20% overall
    # Nearest of 8 candidates to a uniform target: close to uniform over the range.
    assert abs(np.median(contrast) - (low + high) / 2) < 0.05
