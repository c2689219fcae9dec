"""Datasets of the tiny model zoo: procedural images generated from a seed (no download)."""

from evalsuite.data.shapes import (
    CLASS_NAMES,
    SPLITS,
    make_shapes,
    make_split,
    render_shapes,
    write_adm_batch,
)

__all__ = ["CLASS_NAMES", "SPLITS", "make_shapes", "make_split", "render_shapes", "write_adm_batch"]
