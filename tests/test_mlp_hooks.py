"""The default input hook is the MLP's true input, and the runner refuses a pair that is not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mxd_saelens import zoo
from mxd_saelens.data.hooks import MLPHookMismatch, resolve_mlp_hooks
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.evaluation.splice import SplicedLayer, splice
from mxd_saelens.training.config import runner_config
from mxd_saelens.training.runner import PairedTrainingRunner


class OwnMLP(nn.Module):
    """The model's own MLP, as a layer the splice can put in its place."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


@torch.no_grad()
def delta_ce_of_own_mlp(model, tokens: torch.Tensor) -> float:
    layer = zoo.default_layer(model.cfg.model_name)
    hooks = resolve_mlp_hooks(model, layer=layer)
    clean = model(tokens, return_type="loss").item()
    with splice(model, SplicedLayer(OwnMLP(model.blocks[layer].mlp), hooks)):
        spliced = model(tokens, return_type="loss").item()
    return spliced - clean


@pytest.mark.parametrize("name", zoo.list_models())
def test_splicing_the_models_own_mlp_on_the_default_hooks_changes_nothing(name):
    model = zoo.load(name)
    tokens = token_sequences(model, zoo.load_corpus("heldout"), 128, 16)
    assert abs(delta_ce_of_own_mlp(model, tokens)) < 1e-5

    # the same check can fail: with the norms' affine part left in place, the hook is taken
    # before the norm's weight and bias, so the MLP applied there is not the MLP
    unfolded = zoo.load(name, fold_ln=False)
    assert abs(delta_ce_of_own_mlp(unfolded, tokens)) > 1e-4
    # folding changes nothing the model computes
    torch.testing.assert_close(
        model(tokens[:2]).log_softmax(-1), unfolded(tokens[:2]).log_softmax(-1), atol=1e-4, rtol=0
    )


def _zoo_config(**extra):
    return runner_config(
        "topk_transcoder",
        model_name="tiny-gelu",
        dataset_path="zoo",
        layer=2,
        d_in=128,
        d_sae=512,
        k=8,
        context_size=128,
        training_tokens=4096,
        train_batch_size_tokens=1024,
        store_batch_size_prompts=8,
        n_eval_batches=1,
        log_to_wandb=False,
        checkpoint_path=None,
        verbose=False,
        **extra,
    )


def test_runner_refuses_a_pair_the_mlp_does_not_connect_before_training(tmp_path):
    unfolded = zoo.load("tiny-gelu", fold_ln=False)
    cfg = _zoo_config(output_path=str(tmp_path / "out"))
    with pytest.raises(MLPHookMismatch) as refused:
        PairedTrainingRunner(cfg, override_model=unfolded)
    message = str(refused.value)
    for needed in ("blocks.2.ln2.hook_normalized", "blocks.2.hook_mlp_out", "fold_ln=True"):
        assert needed in message
    assert "check_mlp_hooks=False" in message
    assert not (tmp_path / "out").exists()

    # the explicit opt-out trains on the pair anyway, and records it
    opted_out = _zoo_config(output_path=str(tmp_path / "out"), check_mlp_hooks=False)
    layer = PairedTrainingRunner(opted_out, override_model=unfolded).run()
    assert layer.cfg.metadata.check_mlp_hooks is False


def test_runner_refuses_an_output_hook_it_cannot_check(tiny_model, text_dataset):
    cfg = runner_config(
        "topk_transcoder",
        model_name="tiny-test",
        hook_name="blocks.1.ln2.hook_normalized",
        hook_name_out="blocks.1.hook_resid_post",
        d_in=32,
        d_sae=64,
        k=4,
        context_size=32,
        training_tokens=1024,
        store_batch_size_prompts=8,
        n_eval_batches=1,
        log_to_wandb=False,
        checkpoint_path=None,
        verbose=False,
    )
    with pytest.raises(MLPHookMismatch, match=r"blocks\.1\.hook_resid_post.*check_mlp_hooks=False"):
        PairedTrainingRunner(cfg, override_model=tiny_model, override_dataset=text_dataset)
    # a residual-stream input is not the MLP's input either
    cfg = runner_config(
        "topk_transcoder",
        model_name="tiny-test",
        hook_name="blocks.1.hook_resid_mid",
        d_in=32,
        d_sae=64,
        k=4,
        context_size=32,
        training_tokens=1024,
        store_batch_size_prompts=8,
        n_eval_batches=1,
        log_to_wandb=False,
        checkpoint_path=None,
        verbose=False,
    )
    with pytest.raises(MLPHookMismatch, match="relative error"):
        PairedTrainingRunner(cfg, override_model=tiny_model, override_dataset=text_dataset)
