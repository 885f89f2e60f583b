"""Wall time of training one MxD layer data-parallel against one process.

Three ways to use ``--processes`` P cores (default 2): ``torchrun --nproc_per_node P`` with one
thread per process, one process with P threads, and one process with one thread; each from a
paired activation cache and streaming from the model, as six ``mxd-saelens train`` commands
run one after the other. Each is timed from its start to its exit, so the start-up (imports,
model load, the evaluation set, the MLP check) is in every number: give ``--tokens`` enough for
training to dominate.

On a machine with only P cores the P-process run measures the cost of data parallelism (the
gradient all-reduce, and when streaming the activations' all-gather, over gloo), not a
speed-up: one process with P threads already uses every core.

    python benchmarks/data_parallel.py --tokens 2000000
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result
from mxd_saelens import zoo


def launcher(processes: int) -> list[str]:
    """The command that starts ``mxd_saelens`` in ``processes`` processes (one: plain python)."""
    if processes == 1:
        return [sys.executable, "-m", "mxd_saelens"]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        "--nproc_per_node", str(processes), "-m", "mxd_saelens",
    ]  # fmt: skip


def run(command: list[str], threads: int) -> float:
    """Seconds from start to exit of ``command`` with ``threads`` intra-op threads a process."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "WANDB_MODE": "offline",
    }
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def train_args(opts: argparse.Namespace, layer: int, work: Path, name: str) -> list[str]:
    return [
        "train", "--model_name", opts.model, "--layer", str(layer),
        "--match_transcoder_width", str(opts.width), "--k", str(opts.k),
        "--training_tokens", str(opts.tokens), "--train_batch_size_tokens", str(opts.batch),
        "--lr", "0.01", "--n_eval_batches", "1", "--log_to_wandb", "False",
        "--verbose", "False", "--output_path", str(work / name),
        "--checkpoint_path", str(work / f"{name}_checkpoints"),
    ]  # fmt: skip


def cases(processes: int) -> list[tuple[int, int]]:
    """(processes, threads per process) of each run."""
    return [(processes, 1), (1, processes), (1, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-gelu")
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=4096, help="tokens per step, all ranks")
    parser.add_argument("--width", type=int, default=4096, help="matched transcoder width")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/data_parallel.json")
    opts = parser.parse_args()
    if opts.processes < 2:
        parser.error("--processes must be at least 2 (it is compared with one process)")
    if opts.batch % opts.processes:
        parser.error(f"--batch must be a multiple of --processes ({opts.processes})")

    layer = zoo.default_layer(opts.model)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="data_parallel-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        cache_command = [*launcher(1), "cache", "--model_name", opts.model, "--layers"]
        cache_command += [str(layer), "--training_tokens", str(opts.tokens)]
        cache_command += ["--output_path", str(cache), "--verbose", "False"]
        cache_seconds = run(cache_command, opts.processes)
        sources = {
            "cache": ["--cached_activations_path", str(cache)],
            "streaming": ["--dataset_path", "zoo"],
        }
        for source, extra in sources.items():
            for processes, threads in cases(opts.processes):
                name = f"{source}_{processes}x{threads}"
                command = [*launcher(processes), *train_args(opts, layer, work, name), *extra]
                seconds = run(command, threads)
                rows.append(
                    {
                        "source": source,
                        "processes": processes,
                        "threads_per_process": threads,
                        "seconds": round(seconds, 2),
                        "tokens_per_second": round(opts.tokens / seconds),
                    }
                )
                print(f"{name}: {seconds:.1f} s", flush=True)
    write_result(
        opts.out,
        {
            "model": opts.model,
            "layer": layer,
            "tokens": opts.tokens,
            "batch_tokens": opts.batch,
            "match_transcoder_width": opts.width,
            "k": opts.k,
            "cache_seconds": round(cache_seconds, 2),
            "note": (
                "each time runs from the command's start to its exit (start-up included); with "
                f"no more than {opts.processes} cores the {opts.processes}-process runs measure "
                "the overhead of data parallelism, not a speed-up"
            ),
            "runs": rows,
        },
    )


if __name__ == "__main__":
    main()
