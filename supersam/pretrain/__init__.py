"""``supersam pretrain``: the SAM-family base model SuperSAM starts from (see :mod:`supersam.pretrain.loop`)."""

from supersam.pretrain.config import PretrainConfig
from supersam.pretrain.loop import MODEL_FILE, PretrainResult, pretrain

__all__ = ["MODEL_FILE", "PretrainConfig", "PretrainResult", "pretrain"]
