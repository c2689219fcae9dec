"""evalsuite: the ADM evaluation protocol as one tool.

Generate sample sets from ADM-style checkpoints (DDPM/DDIM, classifier guidance) and score them
with FID, sFID, Inception Score, improved precision/recall and KID exactly as the ADM evaluator does.
"""

__version__ = "0.1.0"

# Version of the feature/statistics protocol; part of every cache key and stats file.
PROTOCOL_VERSION = "adm-1"
