"""``supersam pretrain``: the SAM-family base model SuperSAM starts from (see :mod:`supersam.stages.pretrain.loop`)."""

from supersam.stages.pretrain.config import PretrainConfig
from supersam.stages.pretrain.loop import MODEL_FILE, PretrainResult, pretrain

__all__ = ["MODEL_FILE", "PretrainConfig", "PretrainResult", "pretrain"]
