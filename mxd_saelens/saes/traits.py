"""One row per architecture this package trains: its classes, and the traits the rest of the
package asks about (how a model card names it, which field sets its size, whether its shape
comes from the MLP, whether it has a skip path). A new architecture is its own file under
``saes/`` plus a row here; registration, config building, parameter matching, loading checks
and model cards read the row."""

from __future__ import annotations

from dataclasses import dataclass

from mxd_saelens import saes

# an MxD keeps the MLP's hidden units and activation: these fields come from the model
MLP_SHAPE_FIELDS = ("d_hidden", "activation", "glu")


@dataclass(frozen=True)
class Architecture:
    title: str
    training: tuple[type, type]  # (training module, its config)
    inference: tuple[type, type] | None  # None: SAELens owns the inference side already
    size_field: str  # "n_experts" or "d_sae"
    reads_mlp_shape: bool = False  # MLP_SHAPE_FIELDS come from the MLP it replaces
    skip_path: bool = False  # a d_in × d_out skip matrix, paid for with latents

    @property
    def own(self) -> bool:
        """Saved under a name SAELens knows only once this package is imported."""
        return self.inference is not None


ARCHITECTURES: dict[str, Architecture] = {
    "mxd": Architecture(
        "Mixture of Decoders",
        training=(saes.MxDTrainingSAE, saes.MxDTrainingSAEConfig),
        inference=(saes.MxD, saes.MxDConfig),
        size_field="n_experts",
        reads_mlp_shape=True,
    ),
    "topk_transcoder": Architecture(
        "TopK transcoder",
        training=(saes.TopKTranscoderTrainingSAE, saes.TopKTranscoderTrainingSAEConfig),
        inference=(saes.TopKTranscoder, saes.TopKTranscoderConfig),
        size_field="d_sae",
    ),
    "topk_skip_transcoder": Architecture(
        "TopK skip transcoder",
        training=(saes.TopKSkipTranscoderTrainingSAE, saes.TopKSkipTranscoderTrainingSAEConfig),
        inference=(saes.TopKSkipTranscoder, saes.TopKSkipTranscoderConfig),
        size_field="d_sae",
        skip_path=True,
    ),
    "transcoder": Architecture(
        "ReLU transcoder (SAELens's)",
        training=(saes.TranscoderTrainingSAE, saes.TranscoderTrainingSAEConfig),
        inference=None,
        size_field="d_sae",
    ),
    "skip_transcoder": Architecture(
        "ReLU skip transcoder (SAELens's)",
        training=(saes.SkipTranscoderTrainingSAE, saes.SkipTranscoderTrainingSAEConfig),
        inference=None,
        size_field="d_sae",
        skip_path=True,
    ),
}
PAIRED_ARCHITECTURES = tuple(ARCHITECTURES)
OWN_ARCHITECTURES = tuple(name for name, a in ARCHITECTURES.items() if a.own)


def reads_mlp_shape(architecture: str) -> bool:
    row = ARCHITECTURES.get(architecture)
    return row is not None and row.reads_mlp_shape
