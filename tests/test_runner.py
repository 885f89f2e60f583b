"""Training through SAELens's runner and trainer on a small real TransformerLens model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from sae_lens import SAE, LanguageModelSAERunnerConfig
from sae_lens.config import LoggingConfig
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

import mxd_saelens as mxd
import mxd_saelens.data.hooks
from mxd_saelens.training.config import runner_config
from mxd_saelens.training.runner import PairedTrainingRunner
from mxd_saelens.training.trainer import TrainingInterrupted
from tests.helpers import wandb_history, wandb_record_kinds, wandb_run_file_since

D, H, LAYER = 32, 128, 1
HOOK_IN, HOOK_OUT = f"blocks.{LAYER}.ln2.hook_normalized", f"blocks.{LAYER}.hook_mlp_out"
SMALL_RUN = {
    "model_name": "tiny-test",
    "context_size": 32,
    "train_batch_size_tokens": 256,
    "store_batch_size_prompts": 8,
    "n_batches_in_buffer": 8,
    "n_eval_batches": 1,
    "eval_batch_size_prompts": 4,
    "verbose": False,
}

LAYER_FIELDS = {
    "mxd": {"n_experts": 256, "k": 8, "d_hidden": H, "activation": "gelu_tanh", "lr": 3e-3},
    "topk_transcoder": {"d_sae": 512, "k": 8, "lr": 3e-3},
    "topk_skip_transcoder": {"d_sae": 512, "k": 8, "lr": 3e-3},
    "transcoder": {"d_sae": 512, "l1_coefficient": 1e-4, "lr": 3e-3},
    "skip_transcoder": {"d_sae": 512, "l1_coefficient": 1e-4, "lr": 3e-3},
}


def held_out_pairs(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _, cache = model.run_with_cache(tokens, names_filter=[HOOK_IN, HOOK_OUT])
    keep = tokens != model.tokenizer.bos_token_id
    return cache[HOOK_IN][keep], cache[HOOK_OUT][keep]


@torch.no_grad()
def nmse(layer, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((layer(x) - y) ** 2).sum() / (y**2).sum())


@pytest.mark.parametrize("architecture", list(LAYER_FIELDS))
def test_each_architecture_trains_through_the_runner(
    architecture, tiny_model, text_dataset, heldout_tokens, tmp_path
):
    cfg = runner_config(
        architecture,
        hook_name=HOOK_IN,
        d_in=D,
        training_tokens=256 * 250,
        log_to_wandb=False,
        checkpoint_path=None,
        output_path=str(tmp_path / "out"),
        **LAYER_FIELDS[architecture],
        **SMALL_RUN,
    )
    runner = PairedTrainingRunner(cfg, override_model=tiny_model, override_dataset=text_dataset)
    x, y = held_out_pairs(tiny_model, heldout_tokens)
    before = nmse(runner.sae.eval(), x, y)
    runner.sae.train()
    runner.run()

    loaded = SAE.load_from_disk(tmp_path / "out")
    after = nmse(loaded, x, y)
    assert after < 0.5 * before, (before, after)
    constant = float(((y - y.mean(0)) ** 2).sum() / (y**2).sum())  # the mean predictor
    if architecture == "mxd":
        assert after < 0.5 * constant, (after, constant)

    cfg_json = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg_json["architecture"] == architecture
    assert cfg_json["metadata"]["hook_name"] == HOOK_IN
    assert cfg_json["metadata"]["hook_name_out"] == HOOK_OUT
    assert load_file(tmp_path / "out" / "sparsity.safetensors")["sparsity"].shape == (
        loaded.cfg.d_sae,
    )
    assert (tmp_path / "out" / "runner_cfg.json").exists()


def test_paired_rows_stay_aligned_through_the_shuffle(tiny_model, text_dataset):
    cfg = runner_config(
        "mxd",
        hook_name=HOOK_IN,
        d_in=D,
        n_experts=64,
        k=4,
        d_hidden=H,
        training_tokens=10_000,
        log_to_wandb=False,
        checkpoint_path=None,
        **SMALL_RUN,
    )
    runner = PairedTrainingRunner(cfg, override_model=tiny_model, override_dataset=text_dataset)
    store = runner.activations_store
    tokens = store.get_batch_tokens(4)
    packed = store.get_activations(tokens)
    _, cache = tiny_model.run_with_cache(tokens, names_filter=[HOOK_IN, HOOK_OUT])
    torch.testing.assert_close(packed[..., :D], cache[HOOK_IN], rtol=0, atol=0)
    torch.testing.assert_close(packed[..., D:], cache[HOOK_OUT], rtol=0, atol=0)

    # after shuffling, every served row is the (x, y) of one token of the model's forward
    batch = next(store)
    assert batch.shape == (256, 2 * D)
    x_rows = batch[:, :D]
    # recompute y from x through the model's own MLP: the pair must agree exactly
    mlp = tiny_model.blocks[LAYER].mlp
    torch.testing.assert_close(mlp(x_rows[None])[0], batch[:, D:], rtol=1e-5, atol=1e-6)


def _resumable_config(tmp_path: Path, name: str, **extra) -> LanguageModelSAERunnerConfig:
    cfg = runner_config(
        "mxd",
        hook_name=HOOK_IN,
        d_in=D,
        n_experts=128,
        k=4,
        d_hidden=H,
        lr=3e-3,
        training_tokens=256 * 24,
        log_to_wandb=False,
        seed=7,
        checkpoint_path=str(tmp_path / f"{name}_ckpt"),
        output_path=str(tmp_path / name),
        **SMALL_RUN,
        **extra,
    )
    cfg.checkpoint_path = str(tmp_path / f"{name}_ckpt")  # no random suffix, to find it
    return cfg


@pytest.mark.parametrize(
    "balance",
    [{}, {"balance_mode": "revive_dead", "balance_window": 3}],  # the default; a counted window
    ids=["revive", "revive_dead"],
)
def test_interrupted_and_resumed_run_equals_the_straight_run(
    tiny_model, text_dataset, tmp_path, balance
):
    straight = PairedTrainingRunner(
        _resumable_config(tmp_path, "straight", **balance),
        override_model=tiny_model,
        override_dataset=text_dataset,
    ).run()

    # Ctrl-C at step 12: the trainer finishes the step, saves a checkpoint, and stops
    calls = {"n": 0}

    def interrupt_at_step_12(acts, hook):
        calls["n"] += 1
        if calls["n"] == 12:
            os.kill(os.getpid(), signal.SIGINT)

    first = PairedTrainingRunner(
        _resumable_config(tmp_path, "resumed", **balance),
        override_model=tiny_model,
        override_dataset=text_dataset,
    )
    first.sae.hook_sae_input.add_hook(interrupt_at_step_12)
    with pytest.raises(TrainingInterrupted) as stopped:
        first.run()
    checkpoint = stopped.value.checkpoint
    assert checkpoint is not None and (checkpoint / "sae_weights.safetensors").exists()
    assert not (tmp_path / "resumed" / "cfg.json").exists()

    resumed = PairedTrainingRunner(
        _resumable_config(tmp_path, "resumed", resume_from_checkpoint=str(checkpoint), **balance),
        override_model=tiny_model,
        override_dataset=text_dataset,
    ).run()
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name  # bit for bit


@contextmanager
def learning_rates() -> Iterator[list[float]]:
    """The learning rate of every optimiser step taken inside the block (torch's global
    optimiser hook, so the trainer's own optimiser and scheduler are observed as they are)."""
    seen: list[float] = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: seen.append(optimizer.param_groups[0]["lr"])
    )
    try:
        yield seen
    finally:
        handle.remove()


def test_warm_up_and_decay_continue_exactly_across_a_resume(tiny_model, text_dataset, tmp_path):
    schedule = {  # 24 steps: 6 of warm-up, then a cosine decay over 12, then lr_end
        "lr_warm_up_steps": 6,
        "lr_scheduler_name": "cosineannealing",
        "lr_decay_steps": 12,
        "lr_end": 3e-4,
    }
    data = {"override_model": tiny_model, "override_dataset": text_dataset}
    with learning_rates() as straight:
        PairedTrainingRunner(_resumable_config(tmp_path, "straight", **schedule), **data).run()
    assert len(straight) == 24 and len(set(straight)) > 12  # warm-up and decay both moved it

    calls = {"n": 0}

    def interrupt_at_step_9(acts, hook):  # inside the warm-up's end: 9 of 24 steps
        calls["n"] += 1
        if calls["n"] == 9:
            os.kill(os.getpid(), signal.SIGINT)

    first = PairedTrainingRunner(_resumable_config(tmp_path, "resumed", **schedule), **data)
    first.sae.hook_sae_input.add_hook(interrupt_at_step_9)
    with learning_rates() as before, pytest.raises(TrainingInterrupted) as stopped:
        first.run()
    resume = {"resume_from_checkpoint": str(stopped.value.checkpoint)}
    with learning_rates() as after:
        PairedTrainingRunner(
            _resumable_config(tmp_path, "resumed", **schedule, **resume), **data
        ).run()
    assert len(before) == 9
    assert before + after == straight  # the same rate at every step, to the last bit


def test_wandb_offline_logs_training_and_splice_metrics(tiny_model, text_dataset, tmp_path):
    started = time.time()
    cfg = runner_config(
        "mxd",
        hook_name=HOOK_IN,
        d_in=D,
        n_experts=64,
        k=4,
        d_hidden=H,
        training_tokens=256 * 8,
        checkpoint_path=None,
        output_path=None,
        log_to_wandb=True,
        wandb_log_frequency=2,
        eval_every_n_wandb_logs=2,
        wandb_project="mxd-test",
        **SMALL_RUN,
    )
    PairedTrainingRunner(cfg, override_model=tiny_model, override_dataset=text_dataset).run()
    run_file = wandb_run_file_since(started)
    rows = wandb_history(run_file)
    logged = {key: value for row in rows for key, value in row.items()}
    for key in (
        "losses/normalized_mse_loss",
        "metrics/l0",
        "metrics/explained_variance",
        "metrics/normalized_mse",
        "sparsity/dead_fraction",
        "eval/ce_clean",
        "eval/ce_spliced",
        "eval/delta_ce",
        "eval/kl",
    ):
        assert key in logged, (key, sorted(logged))
    assert logged["metrics/l0"] == pytest.approx(4.0)  # k experts fire per token
    assert 0.0 <= logged["sparsity/dead_fraction"] <= 1.0
    assert logged["eval/ce_spliced"] > 0 and logged["eval/ce_clean"] > 0


def test_wandb_run_with_an_output_path_saves_logs_the_artifact_and_evaluates_at_the_end(
    tiny_model, text_dataset, tmp_path, capsys
):
    """SAELens's default evaluation interval (every 1000 steps) is longer than this run: the
    splice metrics are still logged, once, at the last step; the final save happens while the
    wandb run is open, so its artifact is logged; the progress bar ends at 100 %."""
    started = time.time()
    steps = 6
    cfg = runner_config(
        "mxd",
        hook_name=HOOK_IN,
        d_in=D,
        n_experts=64,
        k=4,
        d_hidden=H,
        training_tokens=256 * steps,
        checkpoint_path=None,
        output_path=str(tmp_path / "out"),
        log_to_wandb=True,
        wandb_project="mxd-test",
        **SMALL_RUN,
    )
    assert cfg.logger.wandb_log_frequency * cfg.logger.eval_every_n_wandb_logs > steps
    PairedTrainingRunner(cfg, override_model=tiny_model, override_dataset=text_dataset).run()
    assert type(SAE.load_from_disk(tmp_path / "out")) is mxd.MxD
    run_file = wandb_run_file_since(started)
    rows = wandb_history(run_file)
    evals = [row for row in rows if "eval/delta_ce" in row]
    assert len(evals) == 1 and evals[0]["_step"] == steps - 1
    assert "eval/dead_fraction" in evals[0]
    assert "artifact" in wandb_record_kinds(run_file)
    assert "100%" in capsys.readouterr().err


def test_three_ways_to_configure_are_equivalent() -> None:
    flat = runner_config(
        "mxd",
        model_name="gpt2",
        hook_name="blocks.8.ln2.hook_normalized",
        d_in=768,
        n_experts=21490,
        k=32,
        d_hidden=3072,
        lr=1e-4,
        context_size=128,
        wandb_project="p",
        log_to_wandb=False,
        checkpoint_path=None,
    )
    by_hand = LanguageModelSAERunnerConfig(
        sae=mxd.MxDTrainingSAEConfig(d_in=768, n_experts=21490, k=32, d_hidden=3072),
        model_name="gpt2",
        hook_name="blocks.8.ln2.hook_normalized",
        lr=1e-4,
        context_size=128,
        logger=LoggingConfig(wandb_project="p", log_to_wandb=False),
        checkpoint_path=None,
    )
    from_dict = LanguageModelSAERunnerConfig.from_dict(
        {**by_hand.to_dict(), "sae": {**by_hand.sae.to_dict(), "architecture": "mxd"}}
    )
    for cfg in (by_hand, from_dict):
        assert cfg.sae.to_dict() == flat.sae.to_dict()
        assert type(cfg.sae) is mxd.MxDTrainingSAEConfig
        assert (cfg.model_name, cfg.hook_name, cfg.lr) == (flat.model_name, flat.hook_name, flat.lr)
    with pytest.raises(ValueError, match=r"'n_expert' \(did you mean n_experts"):
        runner_config("mxd", d_in=8, n_expert=10)
    with pytest.raises(ValueError, match="architecture 'topk' does not replace an MLP"):
        runner_config("topk", d_in=8)
    with pytest.raises(ValueError, match=r"unknown architecture 'moe'; the architectures"):
        runner_config("moe", d_in=8)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hook_name": "blocks.1.ln2.hook_normalised"}, "is not a hook point of this model"),
        (
            {"hook_name": "blocks.5.ln2.hook_normalized"},
            "layer 5 is out of range: this model has 2 blocks",
        ),
        ({"d_in": 48}, "set d_in=32 and d_out=32"),
        (
            {"normalize_activations": "layer_norm"},
            "normalize_activations='layer_norm' is not supported",
        ),
    ],
)
def test_bad_input_fails_before_the_model_runs(fields, message, tiny_model, text_dataset):
    base = {"hook_name": HOOK_IN, "d_in": D, "n_experts": 64, "k": 4, "d_hidden": H}
    cfg = runner_config(
        "mxd",
        **{**base, **fields},
        training_tokens=1000,
        log_to_wandb=False,
        checkpoint_path=None,
        **SMALL_RUN,
    )
    forwards = {"n": 0}
    tiny_model.hook_dict["hook_embed"].add_hook(
        lambda acts, hook: forwards.update(n=forwards["n"] + 1)
    )
    try:
        with pytest.raises(ValueError, match=message):
            PairedTrainingRunner(cfg, override_model=tiny_model, override_dataset=text_dataset)
    finally:
        tiny_model.reset_hooks()
    assert forwards["n"] == 0


def test_activation_scale_is_learned_on_both_sides_and_folded(
    tiny_model, text_dataset, heldout_tokens, tmp_path
):
    cfg = runner_config(
        "mxd",
        hook_name=HOOK_IN,
        training_tokens=256 * 150,
        normalize_activations="expected_average_only_in",
        n_batches_for_norm_estimate=4,
        log_to_wandb=False,
        checkpoint_path=None,
        output_path=str(tmp_path / "out"),
        d_in=D,
        **LAYER_FIELDS["mxd"],
        **SMALL_RUN,
    )
    PairedTrainingRunner(cfg, override_model=tiny_model, override_dataset=text_dataset).run()
    loaded = SAE.load_from_disk(tmp_path / "out")
    assert loaded.cfg.normalize_activations == "none"  # the scale lives in the weights now
    x, y = held_out_pairs(tiny_model, heldout_tokens)
    assert nmse(loaded, x, y) < 0.2


def test_gated_model_trains_a_glu_mxd(tiny_gated_model, text_dataset, tmp_path):
    hooks = mxd.data.hooks.resolve_mlp_hooks(tiny_gated_model, layer=LAYER)
    assert hooks.hook_in == HOOK_IN  # RMSNorm models normalise into ln2 too
    shape = mxd.data.hooks.mlp_shape(tiny_gated_model)
    assert shape == {"d_hidden": H, "activation": "silu", "glu": True}
    cfg = runner_config(
        "mxd",
        hook_name=HOOK_IN,
        d_in=D,
        n_experts=256,
        k=8,
        lr=3e-3,
        **shape,
        training_tokens=256 * 150,
        log_to_wandb=False,
        checkpoint_path=None,
        output_path=str(tmp_path / "out"),
        **SMALL_RUN,
    )
    runner = PairedTrainingRunner(
        cfg, override_model=tiny_gated_model, override_dataset=text_dataset
    )
    tokens = runner.evaluator.tokens
    x, y = held_out_pairs(tiny_gated_model, tokens)
    before = nmse(runner.sae.eval(), x, y)
    runner.sae.train()
    runner.run()
    loaded = SAE.load_from_disk(tmp_path / "out")
    assert loaded.cfg.glu and nmse(loaded, x, y) < 0.5 * before


def test_pretokenized_data_with_special_tokens_excluded(tiny_model, text_dataset):
    tokens = tiny_model.to_tokens(" ".join(text_dataset["text"][:60]), prepend_bos=False)[0]
    n = tokens.shape[0] // 31 * 31
    rows = tokens[:n].reshape(-1, 31)
    bos = torch.full((rows.shape[0], 1), tiny_model.tokenizer.bos_token_id)
    pretokenized = Dataset.from_dict({"tokens": torch.cat([bos, rows], 1).tolist()})
    cfg = runner_config(
        "mxd",
        hook_name=HOOK_IN,
        d_in=D,
        n_experts=64,
        k=4,
        d_hidden=H,
        training_tokens=10_000,
        log_to_wandb=False,
        checkpoint_path=None,
        exclude_special_tokens=True,
        **SMALL_RUN,
    )
    runner = PairedTrainingRunner(cfg, override_model=tiny_model, override_dataset=pretokenized)
    store = runner.activations_store
    assert store.is_dataset_tokenized
    batch = next(store)
    assert batch.shape == (256, 2 * D)
    # the BOS position's input (the same vector in every sequence) never reaches training
    _, cache = tiny_model.run_with_cache(torch.cat([bos, rows], 1)[:1], names_filter=[HOOK_IN])
    bos_x = cache[HOOK_IN][0, 0]
    assert not torch.isclose(batch[:, :D], bos_x, atol=1e-6).all(-1).any()


def test_training_on_the_bundled_model_and_corpus_raises_no_warning(tmp_path):
    """SAELens's notices about raw text and epochs are noise for the bundled corpus, and a
    layer of a bundled model records no loading options, so loading it does not warn."""
    cfg = runner_config(
        "mxd",
        model_name="tiny-gelu",
        dataset_path="zoo",
        layer=2,
        d_in=128,
        n_experts=256,
        k=8,
        d_hidden=512,
        activation="gelu_tanh",
        training_tokens=1024 * 4,
        train_batch_size_tokens=1024,
        context_size=128,
        store_batch_size_prompts=8,
        n_eval_batches=1,
        eval_batch_size_prompts=4,
        checkpoint_path=None,
        output_path=str(tmp_path / "out"),
        log_to_wandb=False,
        verbose=False,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PairedTrainingRunner(cfg).run()
        SAE.load_from_disk(tmp_path / "out")
    user_warnings = [str(w.message)[:80] for w in caught if issubclass(w.category, UserWarning)]
    assert user_warnings == []


def test_wandb_without_an_account_names_the_ways_out(tmp_path):
    """wandb logging is SAELens's default; with no login and no WANDB_MODE, the run stops
    before training with the three ways out, not wandb's bare "No API key configured"."""
    script = """
import mxd_saelens
from mxd_saelens.training.recording import WandbNotConfigured
from mxd_saelens.training.runner import PairedTrainingRunner
cfg = mxd_saelens.runner_config(
    "mxd", model_name="tiny-gelu", dataset_path="zoo", layer=2, d_in=128, n_experts=64, k=4,
    d_hidden=512, activation="gelu_tanh", training_tokens=2048, context_size=128,
    checkpoint_path=None, verbose=False,
)
assert cfg.logger.log_to_wandb
try:
    PairedTrainingRunner(cfg).run()
except WandbNotConfigured as error:
    print("REFUSED", error)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_DIR=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert "REFUSED" in done.stdout, done.stderr[-2000:]
    for way_out in ("wandb login", "WANDB_MODE=offline", "log_to_wandb=False"):
        assert way_out in done.stdout
