"""Shared by the zoo diagnostics (zoo/diag_zoo_*.py): a CPU feature computer and a prepared reference, built once.

`python zoo/<script>.py` puts this folder on sys.path, so the scripts import it directly.
"""

from __future__ import annotations

import functools

from evalsuite.experiments.bootstrap import PreparedReference, prepare_reference
from evalsuite.pipeline.evaluate import (
    MetricOptions,
    check_reference,
    load_inception,
    make_computer,
    resolve_reference,
)
from evalsuite.pipeline.reference import Reference, load_reference


@functools.cache
def scoring_setup(
    reference: str, metrics: tuple[str, ...] = ("pr",), pr_k: int = 3
) -> tuple[object, Reference, PreparedReference]:
    """(feature computer, loaded reference, prepared reference) for scoring `metrics` on CPU.

    The reference's stored features are used when present (evalsuite's "auto" mode), otherwise
    computed from its images; cached per (reference, metrics, k).
    """
    options = MetricOptions(pr_k=pr_k)
    loaded = load_reference(reference)
    mode = check_reference(loaded, metrics, "auto", options)
    weights, extractor = load_inception(None, "cpu")
    computer = make_computer(weights, extractor, device="cpu", batch_size=64, progress=False)
    side = resolve_reference(loaded, metrics, mode, computer)
    return computer, loaded, prepare_reference(side, metrics, options)
