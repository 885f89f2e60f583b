"""Data-parallel training under torchrun (two CPU processes, gloo), from a cache and streaming
from the model (with and without overlap): the same layer as one process at twice the
per-process batch, one checkpoint on Ctrl-C, and an exact resumption."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mxd_saelens.cli.main import main
from mxd_saelens.distributed import Distributed, check_distributed_config
from mxd_saelens.training.config import runner_config

TRAIN = (
    "train --layer 2 --n_experts 64 --k 4 --train_batch_size_tokens 1024 --n_eval_batches 1 "
    "--eval_batch_size_prompts 2 --n_batches_for_norm_estimate 2 --log_to_wandb False "
    "--verbose False"
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dp") / "cache"
    args = f"cache --layers 2 --training_tokens 8192 --output_path {folder} --verbose False"
    assert main(shlex.split(args)) == 0
    return folder


ROOT = Path(__file__).resolve().parents[1]


def env() -> dict[str, str]:
    # the processes import this checkout's package, whatever copy is installed
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": path}


def torchrun(args: str, cwd: Path, **popen: object) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "mxd_saelens", *shlex.split(args)]
    return subprocess.Popen(command, cwd=cwd, env=env(), text=True, **popen)  # type: ignore[call-overload]


def run_to_end(args: str, cwd: Path) -> None:
    done = torchrun(args, cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0, out[-3000:]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "sae_weights.safetensors")


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], **tolerance) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], **tolerance)


def test_two_processes_at_half_the_batch_train_the_one_process_layer(cache, tmp_path):
    common = f"{TRAIN} --training_tokens 8192 --cached_activations_path {cache}"
    run_to_end(f"{common} --output_path {tmp_path / 'two'}", tmp_path)
    one = f"{common} --output_path {tmp_path / 'one'} --checkpoint_path {tmp_path / 'ck'}"
    assert main(shlex.split(one)) == 0
    # the same 8 steps of 1,024 tokens: each process took 512 of every batch
    assert_close(weights(tmp_path / "two"), weights(tmp_path / "one"), rtol=1e-4, atol=1e-6)


GRADIENTS = """
import sys, torch
from sae_lens.saes.sae import TrainStepInput
import mxd_saelens as mxd
from mxd_saelens.distributed import Distributed, data_parallel

def layer():  # random weights everywhere: the paper's init leaves most gradients at zero
    sae = mxd.MxDTrainingSAE(
        mxd.MxDTrainingSAEConfig(d_in=12, d_out=10, d_hidden=24, n_experts=40, k=4)
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    sae.normalize_experts()
    return sae

def step_input(rows):
    return TrainStepInput(sae_in=rows, coefficients={}, dead_neuron_mask=None,
                          n_training_steps=0, is_logging_step=False)

def grads(sae):
    return {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}

distributed = Distributed.from_environment()
batch = torch.randn(64, 22, generator=torch.Generator().manual_seed(1))
halves = batch.chunk(distributed.world_size)
sae = layer()
forward = data_parallel(sae, distributed)  # held: the backward runs DDP's hooks on it
forward(step_input(halves[distributed.rank])).loss.backward()
if distributed.is_main:
    # the one-process reference: each half's gradient alone, averaged by hand
    per_half = []
    for half in halves:
        alone = layer()
        alone.training_forward_pass(step_input=step_input(half)).loss.backward()
        per_half.append(grads(alone))
    mean = {n: sum(g[n] for g in per_half) / len(per_half) for n in per_half[0]}
    torch.save({"ddp": grads(sae), "mean": mean, "first": per_half[0]}, sys.argv[1])
"""


def test_data_parallel_gradients_are_the_mean_of_the_ranks_gradients(tmp_path):
    """The gradients themselves, before clipping and Adam (both blind to a constant factor):
    each rank's gradient on its half of the batch, averaged; a sum would be twice that."""
    script = tmp_path / "gradients.py"
    script.write_text(GRADIENTS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script), str(tmp_path / "grads.pt")]
    done = subprocess.run(command, cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(tmp_path / "grads.pt", weights_only=True)
    ddp, mean = saved["ddp"], saved["mean"]
    assert ddp.keys() == mean.keys() and "W_experts" in ddp
    for name in ddp:
        torch.testing.assert_close(ddp[name], mean[name], rtol=1e-5, atol=1e-6)
        # every gradient is non-zero and the halves' differ: neither a sum (twice the mean)
        # nor one rank's own gradient would pass
        assert mean[name].abs().max() > 1e-3, name
        assert not torch.allclose(saved["first"][name], mean[name], rtol=1e-2), name


SEVERAL_LAYERS = """
import sys
from mxd_saelens import MultiPairedTrainingRunner, runner_config

cache, out = sys.argv[1], sys.argv[2]
common = dict(model_name="tiny-gelu", dataset_path="zoo", layer=2, k=4, training_tokens=8192,
              train_batch_size_tokens=1024, n_eval_batches=1, eval_batch_size_prompts=2,
              n_batches_for_norm_estimate=2, cached_activations_path=cache, log_to_wandb=False,
              verbose=False, checkpoint_path=None)
cfgs = {
    "mxd": runner_config("mxd", n_experts=64, output_path=f"{out}/mxd", **common),
    "tc": runner_config("topk_transcoder", d_sae=256, lr=3e-3, output_path=f"{out}/tc", **common),
}
runner = MultiPairedTrainingRunner(cfgs, snapshot_tokens=[4096], snapshot_path=f"{out}/snapshots")
runner.run()
"""


def test_several_layers_train_data_parallel_as_in_one_process(cache, tmp_path):
    """Two layers from one forward, under torchrun at half the batch per process: each layer
    equals the one-process layer, and rank 0 alone writes the layers and the snapshot."""
    script = tmp_path / "several.py"
    script.write_text(SEVERAL_LAYERS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script), str(cache), str(tmp_path / "two")]
    done = subprocess.run(command, cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = [sys.executable, str(script), str(cache), str(tmp_path / "one")]
    done = subprocess.run(alone, cwd=tmp_path, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("mxd", "tc"):
        two, one = weights(tmp_path / "two" / name), weights(tmp_path / "one" / name)
        assert_close(two, one, rtol=1e-4, atol=1e-6)
        snapshot = weights(tmp_path / "two" / "snapshots" / "4096" / name)
        assert not torch.equal(snapshot[next(iter(snapshot))], two[next(iter(two))])
    # the two layers really differ (different architectures and learning rates)
    assert weights(tmp_path / "one" / "mxd").keys() != weights(tmp_path / "one" / "tc").keys()


def wait_for_trained_tokens(log: Path, tokens: int, at_least: int, timeout: float = 300) -> int:
    """Poll the run's progress bar (``N/tokens``, written by rank 0 and 1 alike) until it has
    counted ``at_least`` trained tokens; return the count seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = [int(n) for n in re.findall(rf"(\d+)/{tokens}\b", log.read_text())]
        if counts and max(counts) >= at_least:
            return max(counts)
        time.sleep(0.05)
    raise TimeoutError(f"no {at_least} trained tokens in {log} after {timeout} s")


def interrupt_and_resume_exactly(common: str, tokens: int, tmp_path) -> None:
    """Run ``common`` straight, then again under torchrun with Ctrl-C once a few steps are done:
    both processes stop with one checkpoint and nothing final written, the resumed run equals
    the straight one bit for bit, and a resumption with one process is refused."""
    run_to_end(f"{common} --output_path {tmp_path / 'straight'} --checkpoint_path None", tmp_path)
    log = tmp_path / "interrupted.log"
    with open(log, "w") as out:
        run = torchrun(
            f"{common} --output_path {tmp_path / 'resumed'} --checkpoint_path {tmp_path / 'ck'}",
            tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        seen = wait_for_trained_tokens(log, tokens, at_least=4096)  # 4 steps of 1,024
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group gets SIGINT
        run.wait(timeout=120)  # background forwards, if any, stop too: the processes exit
    text = log.read_text()
    assert run.returncode != 0, text[-3000:]
    checkpoints = [p.parent for p in (tmp_path / "ck").rglob("trainer_state.pt")]
    assert len(checkpoints) == 1, (checkpoints, text[-3000:])
    assert not (tmp_path / "resumed" / "cfg.json").exists()  # nothing final written
    assert text.count("training interrupted; resume with") == 2  # both ranks stopped there
    assert seen <= int(checkpoints[0].name) < tokens

    run_to_end(f"{common} --output_path {tmp_path / 'resumed'} --checkpoint_path None "
               f"--resume_from_checkpoint {checkpoints[0]}", tmp_path)  # fmt: skip
    assert_close(weights(tmp_path / "resumed"), weights(tmp_path / "straight"), rtol=0, atol=0)

    # another number of processes would read other shares of each batch: refused
    alone = f"{common} --checkpoint_path None --resume_from_checkpoint {checkpoints[0]}"
    assert main(shlex.split(alone)) == 2


def test_ctrl_c_stops_both_processes_with_one_checkpoint_and_resumes_exactly(cache, tmp_path):
    common = f"{TRAIN} --training_tokens 409600 --cached_activations_path {cache}"
    interrupt_and_resume_exactly(common, 409600, tmp_path)


@pytest.mark.parametrize("overlap", [False, True])
def test_streaming_two_processes_at_half_the_batch_train_the_one_process_layer(tmp_path, overlap):
    # each process runs the model on 16 of every 32 sequences; the activations are gathered,
    # so both hold the one-process buffer and train on their half of each batch
    common = f"{TRAIN} --training_tokens 8192 --dataset_path zoo"
    two = f"{common} --output_path {tmp_path / 'two'} --prefetch_llm_batches {overlap}"
    run_to_end(two, tmp_path)
    one = f"{common} --output_path {tmp_path / 'one'} --checkpoint_path {tmp_path / 'ck'}"
    assert main(shlex.split(one)) == 0
    assert_close(weights(tmp_path / "two"), weights(tmp_path / "one"), rtol=1e-4, atol=1e-6)


def test_streaming_ctrl_c_with_overlap_stops_both_processes_and_resumes_exactly(tmp_path):
    common = f"{TRAIN} --training_tokens 163840 --dataset_path zoo --prefetch_llm_batches True"
    interrupt_and_resume_exactly(common, 163840, tmp_path)


def test_streaming_store_batches_must_split_over_the_processes():
    def config(prompts: int):
        return runner_config(
            "mxd", model_name="tiny-gelu", layer=2, n_experts=64, k=4,
            store_batch_size_prompts=prompts,
        )  # fmt: skip

    with pytest.raises(ValueError, match="store_batch_size_prompts=5 does not split evenly"):
        check_distributed_config(config(5), Distributed(rank=0, world_size=2))
    check_distributed_config(config(6), Distributed(rank=0, world_size=2))
