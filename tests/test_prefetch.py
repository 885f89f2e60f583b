"""Overlap (``prefetch_llm_batches``): the model's forward for the next store batches runs in a
background thread while the layer trains, serving the same batches in the same order, resuming
exactly, and leaving no thread behind."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import torch
from safetensors.torch import load_file

from mxd_saelens.cli.main import parse_train_args
from mxd_saelens.data.buffers import PREFETCH_THREAD_NAME, BackgroundRefill
from mxd_saelens.data.hooks import resolve_mlp_hooks
from mxd_saelens.data.paired_store import PAIRED_STATE_FILENAME, PairedActivationsStore
from mxd_saelens.training.config import runner_config
from mxd_saelens.training.runner import MultiPairedTrainingRunner, PairedTrainingRunner
from mxd_saelens.training.trainer import TrainingInterrupted
from tests.helpers import wandb_history, wandb_run_file_since
from tests.test_runner import HOOK_IN, SMALL_RUN, D, H, _resumable_config


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == PREFETCH_THREAD_NAME and t.is_alive()]


def mxd_config(**fields):
    """A small MxD on the tiny model's block, without wandb."""
    return runner_config(
        "mxd", hook_name=HOOK_IN, d_in=D, n_experts=64, k=4, d_hidden=H, log_to_wandb=False,
        **fields, **SMALL_RUN,
    )  # fmt: skip


def store(model, dataset, prefetch: bool | int) -> PairedActivationsStore:
    cfg = mxd_config(training_tokens=256 * 40, seed=3, prefetch_llm_batches=prefetch)
    return PairedActivationsStore.from_runner_config(
        model, cfg, resolve_mlp_hooks(model, hook_in=HOOK_IN), override_dataset=dataset
    )


def counting_source(n: int, position: list[int], fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise OSError("the dataset went away")
        position[0] = i + 1
        yield torch.full((2, 3), float(i))


def test_background_refill_keeps_order_and_the_taken_position():
    position = [0]
    refill = BackgroundRefill(counting_source(10, position), lambda: (position[0], 0), depth=3)
    try:
        for i in range(4):
            assert torch.equal(refill(), torch.full((2, 3), float(i)))
            assert refill.position == (i + 1, 0)  # what was taken, not what was computed
        deadline = time.monotonic() + 30
        while position[0] < 4 + 3:  # the producer fills its queue of 3 ahead
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert refill.position == (4, 0)
    finally:
        refill.close()  # with a full queue: the producer notices and ends
    assert not prefetch_threads()
    with pytest.raises(RuntimeError, match="closed"):
        refill()


def test_background_refill_hands_the_producers_error_to_the_consumer():
    position = [0]
    refill = BackgroundRefill(
        counting_source(10, position, fail_at=2), lambda: (position[0], 0), depth=1
    )
    assert refill().shape == (2, 3) and refill().shape == (2, 3)
    with pytest.raises(OSError, match="the dataset went away"):
        refill()
    refill.close()
    assert not prefetch_threads()


@pytest.mark.parametrize("threads", [1, 2])
def test_the_producer_uses_the_threads_torch_was_set_to(threads):
    """torch's intra-op thread count is per thread; a new thread starts from the one set last,
    so the forward runs as it would in the main thread (and with the same results)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        seen = []

        def source():
            while True:
                seen.append(torch.get_num_threads())
                yield torch.randn(64, 64) @ torch.randn(64, 64)  # an op on the intra-op pool

        refill = BackgroundRefill(source(), lambda: (0, 0), depth=2)
        for _ in range(5):
            refill()
        refill.close()
        assert set(seen) == {threads}
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("prefetch", [True, 1, 3])
def test_overlapped_store_serves_the_synchronous_batches(tiny_model, text_dataset, prefetch):
    # one store at a time: a model runs one forward with hooks at a time
    plain = store(tiny_model, text_dataset, False)
    expected = [next(plain) for _ in range(40)]  # 40 batches cross several refills
    overlapped = store(tiny_model, text_dataset, prefetch)
    try:
        for step, batch in enumerate(expected):
            assert torch.equal(next(overlapped), batch), step
        assert overlapped._refill is not None and prefetch_threads()
        # the stream ran ahead, but what a checkpoint records is what the buffer took
        assert overlapped.consumed_position() == plain.consumed_position()
        # … by its depth of store batches (8 sequences each), once the queue is full
        ahead = overlapped._refill.depth * SMALL_RUN["store_batch_size_prompts"]
        deadline = time.monotonic() + 60
        while overlapped.n_sequences_served < plain.n_sequences_served + ahead:
            assert time.monotonic() < deadline, "the producer never filled its queue"
            time.sleep(0.05)
    finally:
        overlapped.close()
    assert not prefetch_threads()


def test_true_computes_one_refill_ahead(tiny_model, text_dataset):
    overlapped = store(tiny_model, text_dataset, True)
    try:
        next(overlapped)
        # a refill takes half the 10,240-row buffer: 5,120 rows, 20 store batches of 256
        assert overlapped._refill is not None and overlapped._refill.depth == 20
    finally:
        overlapped.close()


def test_overlap_trains_the_layer_of_the_synchronous_run(tiny_model, text_dataset, tmp_path):
    def train(name: str, prefetch: bool):
        cfg = _resumable_config(tmp_path, name, prefetch_llm_batches=prefetch)
        return PairedTrainingRunner(
            cfg, override_model=tiny_model, override_dataset=text_dataset
        ).run()

    plain, overlapped = train("plain", False), train("overlapped", True)
    for name, value in plain.state_dict().items():
        assert torch.equal(overlapped.state_dict()[name], value), name  # bit for bit
    assert not prefetch_threads()


def test_evaluations_pause_the_background_forwards(tiny_model, text_dataset, tmp_path):
    """The splice evaluation runs the model with hooks of its own; a background forward at the
    same time would capture spliced activations (or lose its hooks to the evaluation's)."""

    def train(name: str, prefetch: bool):
        cfg = _resumable_config(
            tmp_path,
            name,
            prefetch_llm_batches=prefetch,
            wandb_log_frequency=1,
            eval_every_n_wandb_logs=2,  # an evaluation every other step
            wandb_project="mxd-test",
        )
        cfg.logger.log_to_wandb = True
        started = time.time()
        layer = PairedTrainingRunner(
            cfg, override_model=tiny_model, override_dataset=text_dataset
        ).run()
        rows = wandb_history(wandb_run_file_since(started))
        return layer, [row["eval/delta_ce"] for row in rows if "eval/delta_ce" in row]

    (plain, plain_evals), (overlapped, evals) = train("plain", False), train("overlapped", True)
    assert len(evals) == 12 and evals == plain_evals
    for name, value in plain.state_dict().items():
        assert torch.equal(overlapped.state_dict()[name], value), name


def test_interrupted_overlapped_run_resumes_exactly_and_leaves_no_thread(
    tiny_model, text_dataset, tmp_path
):
    def config(name: str, **extra):
        return _resumable_config(tmp_path, name, prefetch_llm_batches=True, **extra)

    straight = PairedTrainingRunner(
        config("straight"), override_model=tiny_model, override_dataset=text_dataset
    ).run()

    calls = {"n": 0}

    def interrupt_at_step_12(acts, hook):  # Ctrl-C while the producer runs ahead
        calls["n"] += 1
        if calls["n"] == 12:
            os.kill(os.getpid(), signal.SIGINT)

    first = PairedTrainingRunner(
        config("resumed"), override_model=tiny_model, override_dataset=text_dataset
    )
    first.sae.hook_sae_input.add_hook(interrupt_at_step_12)
    with pytest.raises(TrainingInterrupted) as stopped:
        first.run()
    assert not prefetch_threads()
    checkpoints = list((tmp_path / "resumed_ckpt").iterdir())
    assert checkpoints == [stopped.value.checkpoint]
    # the producer had run ahead of step 12; the checkpoint is of the rows the buffer took
    saved = load_file(checkpoints[0] / PAIRED_STATE_FILENAME)["n_sequences_served"]
    assert first.activations_store.n_sequences_served > int(saved)

    resumed = PairedTrainingRunner(
        config("resumed", resume_from_checkpoint=str(checkpoints[0])),
        override_model=tiny_model,
        override_dataset=text_dataset,
    ).run()
    for name, value in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name  # bit for bit
    assert not prefetch_threads()


def test_several_layers_from_one_overlapped_forward(tiny_model, text_dataset, tmp_path):
    def train(prefetch: bool):
        cfgs = {
            name: runner_config(
                architecture,
                hook_name=HOOK_IN,
                d_in=D,
                training_tokens=256 * 16,
                log_to_wandb=False,
                seed=5,
                prefetch_llm_batches=prefetch,
                **fields,
                **SMALL_RUN,
            )
            for name, architecture, fields in (
                ("mxd", "mxd", {"n_experts": 64, "k": 4, "d_hidden": H}),
                ("tc", "topk_transcoder", {"d_sae": 256, "k": 4}),
            )
        }
        return MultiPairedTrainingRunner(
            cfgs, override_model=tiny_model, override_dataset=text_dataset
        ).run()

    plain, overlapped = train(False), train(True)
    for layer in plain:
        for name, value in plain[layer].state_dict().items():
            assert torch.equal(overlapped[layer].state_dict()[name], value), (layer, name)
    assert not prefetch_threads()


def test_flag_on_the_command_line():
    base = ["--layer", "1", "--n_experts", "64", "--k", "4", "--dataset_path", "zoo"]
    assert parse_train_args(base)[0].prefetch_llm_batches is False
    assert parse_train_args([*base, "--prefetch_llm_batches", "True"])[0].prefetch_llm_batches


def test_overlap_with_a_cache_is_refused_before_the_model_loads(tmp_path):
    cfg = mxd_config(
        prefetch_llm_batches=True, cached_activations_path=str(tmp_path / "no_such_cache")
    )
    with pytest.raises(ValueError, match="there is no forward"):
        PairedTrainingRunner(cfg)
