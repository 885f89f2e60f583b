"""mxd-saelens: Mixture of Decoders and transcoders as SAELens architectures.

Importing the package registers ``mxd``, ``topk_transcoder`` and ``topk_skip_transcoder``
(inference and training) and training classes for SAELens's ``transcoder`` and
``skip_transcoder`` in SAELens's registries.
"""

from mxd_saelens.sae_lens_internals import accept_bundled_models, check_private_api
from mxd_saelens.saes import (
    MxD,
    MxDConfig,
    MxDTrainingSAE,
    MxDTrainingSAEConfig,
    SkipTranscoderTrainingSAE,
    SkipTranscoderTrainingSAEConfig,
    TopKSkipTranscoder,
    TopKSkipTranscoderConfig,
    TopKSkipTranscoderTrainingSAE,
    TopKSkipTranscoderTrainingSAEConfig,
    TopKTranscoder,
    TopKTranscoderConfig,
    TopKTranscoderTrainingSAE,
    TopKTranscoderTrainingSAEConfig,
    TranscoderTrainingSAE,
    TranscoderTrainingSAEConfig,
)
from mxd_saelens.saes.params import matched_n_experts, parameter_count, transcoder_parameter_count
from mxd_saelens.saes.registration import register_architectures
from mxd_saelens.training.config import runner_config

check_private_api()  # an incompatible SAELens fails here, naming what it lacks
register_architectures()
accept_bundled_models()  # SAELens's load_model and runners accept the bundled models' names

from mxd_saelens.training.runner import MultiPairedTrainingRunner, PairedTrainingRunner  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "MultiPairedTrainingRunner",
    "MxD",
    "MxDConfig",
    "MxDTrainingSAE",
    "MxDTrainingSAEConfig",
    "PairedTrainingRunner",
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
    "__version__",
    "matched_n_experts",
    "parameter_count",
    "register_architectures",
    "runner_config",
    "transcoder_parameter_count",
]
