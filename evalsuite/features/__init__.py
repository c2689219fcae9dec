"""Inception features of the ADM evaluator (protocol §1): weights resolution and extraction."""

from evalsuite.features.inception import (
    InceptionFeatureExtractor,
    extract_features,
    to_nchw_uint8,
)
from evalsuite.features.weights import (
    IS_UNAVAILABLE,
    STANDARD_WEIGHT_FILES,
    WEIGHTS_ENV,
    InceptionWeights,
    load_inception_state_dict,
    resolve_inception_weights,
)

__all__ = [
    "IS_UNAVAILABLE",
    "STANDARD_WEIGHT_FILES",
    "WEIGHTS_ENV",
    "InceptionFeatureExtractor",
    "InceptionWeights",
    "extract_features",
    "load_inception_state_dict",
    "resolve_inception_weights",
    "to_nchw_uint8",
]
