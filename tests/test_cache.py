"""Paired activation caches: what is written is the model's forward, training from a cache
learns, reshuffles every epoch, resumes exactly, and refuses a cache it cannot use before the
model loads."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from sae_lens import SAE
from sae_lens.training.activations_store import ActivationsStore

from mxd_saelens.cli.main import main
from mxd_saelens.data.cache_format import CacheMismatch, PairedCache, as_tensor
from mxd_saelens.data.cache_reader import CachedPairedActivations
from mxd_saelens.data.cache_writer import cache_paired_activations
from mxd_saelens.training.config import runner_config
from mxd_saelens.training.runner import MultiPairedTrainingRunner, PairedTrainingRunner
from mxd_saelens.training.trainer import TrainingInterrupted

D, H = 32, 128
HOOKS = {b: (f"blocks.{b}.ln2.hook_normalized", f"blocks.{b}.hook_mlp_out") for b in (0, 1)}
CACHE = {"model_name": "tiny-test", "context_size": 32, "store_batch_size_prompts": 8}
SMALL_RUN = {
    "model_name": "tiny-test",
    "d_in": D,
    "context_size": 32,
    "train_batch_size_tokens": 256,
    "n_eval_batches": 1,
    "eval_batch_size_prompts": 4,
    "log_to_wandb": False,
    "verbose": False,
    "seed": 5,
}


def make_cache(model, dataset, path: Path, n_tokens: int, layers=(0, 1), **options) -> Path:
    return cache_paired_activations(
        override_model=model,
        override_dataset=dataset,
        layers=list(layers),
        training_tokens=n_tokens,
        output_path=str(path),
        dataset_path="synthetic",
        verbose=False,
        **{**CACHE, **options},
    )


@pytest.fixture(scope="module")
def cache_dir(tiny_model, text_dataset, tmp_path_factory) -> Path:
    """Blocks 0 and 1 of the test model, 2,560 tokens (10 batches of 256), float32."""
    return make_cache(tiny_model, text_dataset, tmp_path_factory.mktemp("c") / "cache", 2560)


def layer_cfg(tmp_path: Path, name: str, block: int = 1, cache: Path | None = None, **extra):
    checkpoint = extra.pop("checkpoint_path", str(tmp_path / f"{name}_ckpt"))
    cfg = runner_config(
        "mxd",
        hook_name=HOOKS[block][0],
        n_experts=96,
        k=4,
        d_hidden=H,
        lr=3e-3,
        training_tokens=256 * 24,
        output_path=str(tmp_path / name),
        checkpoint_path=checkpoint,
        cached_activations_path=None if cache is None else str(cache),
        **{**SMALL_RUN, **extra},
    )
    cfg.checkpoint_path = checkpoint  # no random suffix, to find it
    return cfg


def test_cached_rows_are_the_models_forward_bit_for_bit(tiny_model, text_dataset, cache_dir):
    # the same sequences, cut by SAELens's own store with the same settings
    store = ActivationsStore(
        model=tiny_model,
        dataset=text_dataset,
        streaming=False,
        hook_name=HOOKS[0][0],
        hook_head_index=None,
        context_size=32,
        d_in=D,
        n_batches_in_buffer=1,
        total_training_tokens=2560,
        store_batch_size_prompts=8,
        train_batch_size_tokens=256,
        prepend_bos=True,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
    )
    tokens = torch.cat([store.get_batch_tokens() for _ in range(10)])  # 80 sequences of 32
    cache = PairedCache.open(cache_dir)
    manifest = cache.manifest
    assert (
        hashlib.sha256(tokens.numpy().tobytes()).hexdigest()
        == (manifest["dataset"]["tokens_sha256"])
    )
    names = [name for block in (0, 1) for name in HOOKS[block]]
    _, forward = tiny_model.run_with_cache(tokens, names_filter=names)
    for block in (0, 1):
        stored = torch.from_numpy(np.array(cache.rows(block)))
        expected = torch.cat([forward[n].reshape(-1, D) for n in HOOKS[block]], dim=1)
        assert stored.dtype == torch.float32 and torch.equal(stored, expected)
    assert manifest["model_name"] == "tiny-test" and manifest["n_tokens"] == 2560
    assert manifest["dataset"]["path"] == "synthetic"
    assert manifest["dataset"]["fingerprint"] == text_dataset._fingerprint
    assert [b["hook_in"] for b in manifest["blocks"]] == [HOOKS[0][0], HOOKS[1][0]]
    assert all(b["mlp_check"]["checked"] for b in manifest["blocks"])
    for key in ("mxd_saelens_version", "context_size", "prepend_bos", "exclude_special_tokens"):
        assert key in manifest
    assert [p.name for p in cache_dir.parent.iterdir()] == ["cache"]  # no temporary left


def test_bfloat16_storage_round_trips_within_bfloat16_precision(
    tiny_model, text_dataset, cache_dir, tmp_path
):
    bf16 = PairedCache.open(make_cache(tiny_model, text_dataset, tmp_path / "bf16", 2560,
                                       dtype="bfloat16"))  # fmt: skip
    f32 = PairedCache.open(cache_dir)
    for block in (0, 1):
        half = as_tensor(bf16.rows(block)[:], "bfloat16")
        full = as_tensor(f32.rows(block)[:], "float32")
        assert half.dtype == torch.bfloat16
        assert torch.equal(half, full.to(torch.bfloat16))  # rounded once, stored exactly
        torch.testing.assert_close(half.float(), full, rtol=2**-8, atol=1e-6)
        size = (bf16.path / f"block_{block}.bin").stat().st_size
        assert 2 * size == (f32.path / f"block_{block}.bin").stat().st_size


def test_a_float32_layer_trains_from_a_bfloat16_cache_on_the_widened_rows(
    tiny_model, text_dataset, tmp_path
):
    """bfloat16 storage halves the disk; the layer still computes in float32, on exactly the
    stored values widened."""
    bf16 = make_cache(tiny_model, text_dataset, tmp_path / "bf16", 2560, dtype="bfloat16")
    cfg = layer_cfg(tmp_path, "layer", cache=bf16, checkpoint_path=None)
    runner = PairedTrainingRunner(cfg, override_model=tiny_model, override_dataset=text_dataset)
    layer = runner.run()
    assert layer.W_enc.dtype == torch.float32
    cache = PairedCache.open(bf16)
    store = CachedPairedActivations(cache, [1], 256, seed=0, dtype=torch.float32)
    rows = next(store)
    first = store.order(0)[:256]
    assert rows.dtype == torch.float32
    assert torch.equal(rows, as_tensor(cache.rows(1)[first], "bfloat16").float())


def test_training_from_the_cache_learns(tiny_model, text_dataset, heldout_tokens, cache_dir,
                                        tmp_path):  # fmt: skip
    cfg = layer_cfg(tmp_path, "layer", cache=cache_dir, checkpoint_path=None)
    runner = PairedTrainingRunner(cfg, override_model=tiny_model, override_dataset=text_dataset)
    assert isinstance(runner.activations_store, CachedPairedActivations)
    _, forward = tiny_model.run_with_cache(heldout_tokens, names_filter=list(HOOKS[1]))
    x, y = (forward[n].reshape(-1, D) for n in HOOKS[1])

    def nmse(layer) -> float:
        with torch.no_grad():
            return float(((layer(x) - y) ** 2).sum() / (y**2).sum())

    before = nmse(runner.sae.eval())
    runner.sae.train()
    runner.run()
    # 24 steps from a cache of 10 batches (after 8 batches for the output bias): 3.2 epochs
    assert runner.activations_store.epoch == 3
    loaded = SAE.load_from_disk(tmp_path / "layer")
    assert nmse(loaded) < 0.5 * before, (before, nmse(loaded))
    assert loaded.cfg.metadata.dataset_path == "synthetic"  # the cache's, as none was given


def test_every_epoch_serves_every_row_once_in_a_new_order(cache_dir):
    cache = PairedCache.open(cache_dir)
    n = cache.n_tokens
    batches = CachedPairedActivations(cache, [0, 1], batch_rows=300, seed=1)
    served = torch.cat([next(batches) for _ in range(3 * n // 300 + 1)])[: 3 * n]
    assert served.shape == (3 * n, 4 * D)
    # a token's row: both blocks' [x ‖ y], side by side
    tokens = torch.cat([as_tensor(cache.rows(b)[:], "float32") for b in (0, 1)], dim=1)

    def multiset(rows: torch.Tensor) -> list[bytes]:
        return sorted(row.numpy().tobytes() for row in rows)

    epochs = [served[e * n : (e + 1) * n] for e in range(3)]
    for part in epochs:  # each token exactly once per epoch, its blocks' columns together
        assert multiset(part) == multiset(tokens)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    assert not torch.equal(epochs[0], tokens)  # shuffled, not the file's order
    # the seed decides the permutation
    again = CachedPairedActivations(cache, [0, 1], batch_rows=300, seed=1)
    assert torch.equal(next(again), served[:300])
    other = CachedPairedActivations(cache, [0, 1], batch_rows=300, seed=2)
    assert not torch.equal(next(other), served[:300])


def test_interrupted_and_resumed_run_from_the_cache_equals_the_straight_run(
    tiny_model, text_dataset, cache_dir, tmp_path
):
    def runner(name: str, **extra) -> PairedTrainingRunner:
        return PairedTrainingRunner(
            layer_cfg(tmp_path, name, cache=cache_dir, **extra),
            override_model=tiny_model,
            override_dataset=text_dataset,
        )

    straight = runner("straight").run()
    calls = {"n": 0}

    def interrupt_at_step_5(acts, hook):  # step 5 is in the second epoch of the cache
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    first = runner("resumed")
    first.sae.hook_sae_input.add_hook(interrupt_at_step_5)
    with pytest.raises(TrainingInterrupted) as stopped:
        first.run()
    checkpoint = stopped.value.checkpoint
    assert checkpoint is not None and checkpoint.name == str(5 * 256)
    assert first.activations_store.epoch == 1  # 8 + 5 batches of a 10-batch cache
    resumed = runner("resumed", resume_from_checkpoint=str(checkpoint)).run()
    for key, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key  # bit for bit

    # a checkpoint resumes only with the cache it was trained from
    other = make_cache(tiny_model, text_dataset, tmp_path / "other", 2560)
    with pytest.raises(ValueError, match="trained from another activation cache"):
        PairedTrainingRunner(
            layer_cfg(tmp_path, "x", cache=other, resume_from_checkpoint=str(checkpoint)),
            override_model=tiny_model,
            override_dataset=text_dataset,
        ).run()


def test_layers_of_two_blocks_from_one_cache_equal_each_trained_alone(
    tiny_model, text_dataset, cache_dir, tmp_path
):
    together = MultiPairedTrainingRunner(
        {f"block{b}": layer_cfg(tmp_path / "multi", f"block{b}", b, cache_dir) for b in (0, 1)},
        override_model=tiny_model,
        override_dataset=text_dataset,
    ).run()
    for block in (0, 1):
        alone = PairedTrainingRunner(
            layer_cfg(tmp_path / "one", "l", block, cache_dir),
            override_model=tiny_model,
            override_dataset=text_dataset,
        ).run()
        for key, value in alone.state_dict().items():
            torch.testing.assert_close(together[f"block{block}"].state_dict()[key], value,
                                       rtol=1e-6, atol=0)  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        (
            {"model_name": "tiny-gelu"},
            CacheMismatch,
            "made from 'tiny-test'.*model_name='tiny-gelu'",
        ),
        ({"cache_layers": (1,), "block": 0}, CacheMismatch, r"holds blocks \[1\], not block 0"),
        ({"d_in": 48}, CacheMismatch, "set d_in=32 and d_out=32"),
        ({"dtype": "bfloat16"}, CacheMismatch, "stores float32.*discard.*set dtype='float32'"),
        ({"context_size": 16}, CacheMismatch, "context_size=32.*context_size=16"),
        ({"dataset_path": "zoo"}, CacheMismatch, "dataset_path='synthetic'"),
        ({"partial": "manifest"}, FileNotFoundError, "holds no manifest.json"),
        ({"partial": "truncated"}, ValueError, "incomplete or damaged"),
        ({"partial": "nowhere"}, FileNotFoundError, "there is no activation cache"),
    ],
)
def test_a_cache_the_layer_cannot_use_is_refused_before_the_model_loads(
    fields, error, message, tiny_model, text_dataset, cache_dir, tmp_path
):
    fields = dict(fields)
    cache = cache_dir
    if "cache_layers" in fields or "cache_dtype" in fields:
        cache = make_cache(tiny_model, text_dataset, tmp_path / "c", 512,
                           layers=fields.pop("cache_layers", (0, 1)),
                           dtype=fields.pop("cache_dtype", "float32"))  # fmt: skip
    partial = fields.pop("partial", None)
    if partial == "manifest":  # a cache folder whose writer never finished
        cache = tmp_path / "partial"
        shutil.copytree(cache_dir, cache)
        (cache / "manifest.json").unlink()
    elif partial == "truncated":
        cache = tmp_path / "truncated"
        shutil.copytree(cache_dir, cache)
        with open(cache / "block_1.bin", "r+b") as f:
            f.truncate(1000)
    elif partial == "nowhere":
        cache = tmp_path / "nowhere"
    block = fields.pop("block", 1)
    cfg = layer_cfg(tmp_path, "layer", block, cache, **fields)
    # no model is given: "tiny-test" cannot be loaded, so any other error means it was tried
    with pytest.raises(error, match=message) as raised:
        PairedTrainingRunner(cfg)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "layer").exists() and not (tmp_path / "layer_ckpt").exists()


def test_an_interrupted_cache_leaves_nothing_that_looks_like_a_cache(
    tiny_model, text_dataset, tmp_path
):
    forwards = {"n": 0}

    def interrupt_at_the_third_forward(acts, hook):
        forwards["n"] += 1
        if forwards["n"] == 3:
            raise KeyboardInterrupt

    tiny_model.hook_dict["hook_embed"].add_hook(interrupt_at_the_third_forward)
    try:
        with pytest.raises(KeyboardInterrupt):
            make_cache(tiny_model, text_dataset, tmp_path / "cache", 2560)
    finally:
        tiny_model.reset_hooks()
    assert forwards["n"] == 3
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileExistsError, match="exists"):
        make_cache(tiny_model, text_dataset, tmp_path, 256)


def test_cache_and_train_from_the_command_line(tmp_path, capsys):
    cache = tmp_path / "cache"
    args = f"cache --layers 2 --training_tokens 4096 --output_path {cache} --verbose False"
    assert main(shlex.split(args)) == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert (manifest["model_name"], manifest["dataset"]["path"]) == ("tiny-gelu", "zoo")
    assert manifest["blocks"][0]["hook_in"] == "blocks.2.ln2.hook_normalized"
    assert (cache / "block_2.bin").stat().st_size == 4096 * 256 * 4

    train = (
        f"train --layer 2 --n_experts 64 --k 4 --training_tokens 8192 "
        f"--train_batch_size_tokens 1024 --n_batches_for_norm_estimate 2 "
        f"--n_eval_batches 1 --eval_batch_size_prompts 2 --log_to_wandb False --verbose False "
        f"--checkpoint_path {tmp_path / 'ckpt'} --output_path {tmp_path / 'layer'} "
        f"--cached_activations_path {cache}"
    )
    assert main(shlex.split(train)) == 0
    layer = SAE.load_from_disk(tmp_path / "layer")
    assert layer.cfg.metadata.hook_name == "blocks.2.ln2.hook_normalized"
    assert layer.cfg.metadata.dataset_path == "zoo"
    capsys.readouterr()

    assert main(shlex.split(train.replace("--layer 2", "--layer 3"))) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and "not block 3" in err[0] and "--layers 3" in err[0]
