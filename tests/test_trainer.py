"""The paired trainer's step against SAELens's own: the same weights and firing statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from mxd_saelens.training.config import runner_config
from mxd_saelens.training.trainer import PairedSAETrainer

D = 16
FIELDS = {
    # balancing (on by default for an MxD) is the one step SAELens's trainer lacks; it is
    # tested on its own in test_balancing.py
    "mxd": {"n_experts": 64, "k": 4, "d_hidden": 32, "balance_rate": 0.0},
    "topk_transcoder": {"d_sae": 64, "k": 4},
    "transcoder": {"d_sae": 64, "l1_coefficient": 1e-3},  # dense codes
}


@pytest.mark.parametrize("architecture", list(FIELDS))
def test_paired_step_equals_saelens_step(architecture):
    cfg = runner_config(
        architecture,
        hook_name="blocks.0.ln2.hook_normalized",
        d_in=D,
        training_tokens=64 * 6,
        train_batch_size_tokens=64,
        lr=1e-2,
        dead_feature_window=2,
        log_to_wandb=False,
        checkpoint_path=None,
        **FIELDS[architecture],
    )
    torch.manual_seed(0)
    sae_cfg = TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict())
    ours_sae = TrainingSAE.from_dict(sae_cfg.to_dict())
    theirs_sae = copy.deepcopy(ours_sae)
    trainer_cfg = cfg.to_sae_trainer_config()
    ours = PairedSAETrainer(cfg=trainer_cfg, sae=ours_sae, data_provider=iter(()))
    theirs = SAETrainer(cfg=trainer_cfg, sae=theirs_sae, data_provider=iter(()))
    if hasattr(theirs_sae, "normalize_experts"):  # what the paired trainer adds after each step
        theirs.optimizer.register_step_post_hook(lambda *_: theirs_sae.normalize_experts())

    generator = torch.Generator().manual_seed(1)
    for _ in range(6):
        batch = torch.randn(64, 2 * D, generator=generator)
        ours.step(batch)
        theirs.step(batch)
        ours.n_training_steps += 1
        theirs.n_training_steps += 1
    for key, value in theirs_sae.state_dict().items():
        torch.testing.assert_close(ours_sae.state_dict()[key], value, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours.act_freq_scores, theirs.act_freq_scores, rtol=0, atol=0)
    assert torch.equal(ours.n_forward_passes_since_fired, theirs.n_forward_passes_since_fired)
    assert ours.n_frac_active_samples == theirs.n_frac_active_samples
    assert theirs.act_freq_scores.sum() > 0
