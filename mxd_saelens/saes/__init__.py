"""The architectures, one per file, each with its config beside it."""

from mxd_saelens.saes.mxd import MxD, MxDConfig
from mxd_saelens.saes.mxd_training import MxDTrainingSAE, MxDTrainingSAEConfig
from mxd_saelens.saes.relu_transcoders import (
    SkipTranscoderTrainingSAE,
    SkipTranscoderTrainingSAEConfig,
    TranscoderTrainingSAE,
    TranscoderTrainingSAEConfig,
)
from mxd_saelens.saes.topk_skip_transcoder import (
    TopKSkipTranscoder,
    TopKSkipTranscoderConfig,
    TopKSkipTranscoderTrainingSAE,
    TopKSkipTranscoderTrainingSAEConfig,
)
from mxd_saelens.saes.topk_transcoder import (
    TopKTranscoder,
    TopKTranscoderConfig,
    TopKTranscoderTrainingSAE,
    TopKTranscoderTrainingSAEConfig,
)

__all__ = [
    "MxD",
    "MxDConfig",
    "MxDTrainingSAE",
    "MxDTrainingSAEConfig",
    "SkipTranscoderTrainingSAE",
    "SkipTranscoderTrainingSAEConfig",
    "TopKSkipTranscoder",
    "TopKSkipTranscoderConfig",
    "TopKSkipTranscoderTrainingSAE",
    "TopKSkipTranscoderTrainingSAEConfig",
    "TopKTranscoder",
    "TopKTranscoderConfig",
    "TopKTranscoderTrainingSAE",
    "TopKTranscoderTrainingSAEConfig",
    "TranscoderTrainingSAE",
    "TranscoderTrainingSAEConfig",
]
