"""What a paired activation cache costs and buys: its size on disk, training throughput from the
cache against streaming from the model, and a k × architecture sweep from one cache.

1. Size: the cache of ``--tokens`` tokens of one block, in float32 and bfloat16, as bytes per
   million tokens (a property of the format, not a timing).
2. Throughput, the demo's three matched layers (k = 32) from one shared batch stream: end to end
   streaming (``MultiPairedTrainingRunner`` running the model), streaming overlapped (the same
   with ``prefetch_llm_batches=True``: the model's forwards in a background thread) and end to
   end from the cache (the same runner reading the cache), against the layers' steps alone on
   batches drawn beforehand.
3. Sweep: ``--ks`` × ``--architectures`` layers (12 by default), each trained alone, once
   streaming (a model pass per layer) and once from one cache (one model pass in all, the
   cache's writing time included).

    python benchmarks/cache_sweep.py --tokens 2000000

Each phase runs in this process, one after the other, with the same threads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import step_only_seconds, write_result
from mxd_saelens import zoo
from mxd_saelens.data.cache_writer import cache_paired_activations
from mxd_saelens.demo import DemoOptions, layer_config
from mxd_saelens.training.runner import MultiPairedTrainingRunner, PairedTrainingRunner

ARCHITECTURES = ("mxd", "topk_transcoder", "topk_skip_transcoder")


def timed(run: Any) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def write_cache(model: Any, opts: argparse.Namespace, layer: int, folder: Path, dtype: str) -> None:
    cache_paired_activations(
        override_model=model,
        override_dataset=zoo.load_corpus("train"),
        model_name=opts.model,
        dataset_path="zoo",
        layers=[layer],
        training_tokens=opts.tokens,
        output_path=str(folder),
        dtype=dtype,
        verbose=False,
    )


def cache_size(model: Any, opts: argparse.Namespace, layer: int, work: Path) -> dict[str, Any]:
    sizes, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        folder = work / f"size_{dtype}"
        seconds[dtype] = timed(
            lambda folder=folder, dtype=dtype: write_cache(model, opts, layer, folder, dtype)
        )
        total = sum(p.stat().st_size for p in folder.iterdir())
        sizes[dtype] = round(total / opts.tokens * 1e6)
    return {"bytes_per_million_tokens": sizes, "cache_seconds": _rounded(seconds)}


def throughput(model: Any, opts: argparse.Namespace, layer: int, cache: Path) -> dict[str, Any]:
    options = DemoOptions(model=opts.model, training_tokens=opts.tokens, batch_tokens=opts.batch)
    configs = {a: layer_config(model, a, options, layer, None) for a in ARCHITECTURES}
    streamed = MultiPairedTrainingRunner(
        configs, override_model=model, override_dataset=zoo.load_corpus("train")
    )
    streaming = timed(streamed.run)
    overlapped_configs = {
        a: layer_config(model, a, options, layer, None, prefetch_llm_batches=True)
        for a in ARCHITECTURES
    }
    overlapped = timed(
        MultiPairedTrainingRunner(
            overlapped_configs, override_model=model, override_dataset=zoo.load_corpus("train")
        ).run
    )
    cached_configs = {
        a: layer_config(model, a, options, layer, None, cached_activations_path=str(cache))
        for a in ARCHITECTURES
    }
    cached = MultiPairedTrainingRunner(
        cached_configs, override_model=model, override_dataset=zoo.load_corpus("train")
    )
    from_cache = timed(cached.run)

    # the same number of steps on batches drawn beforehand: the layers' steps alone
    n_steps = max(1, opts.tokens // opts.batch)
    steps = sum(step_only_seconds(cached_configs, cached.activations_store, n_steps).values())
    rate = {
        "streaming": opts.tokens / streaming,
        "streaming_overlapped": opts.tokens / overlapped,
        "from_cache": opts.tokens / from_cache,
        "step_only": n_steps * opts.batch / steps,
    }
    return {
        "layers": list(ARCHITECTURES),
        "tokens_per_second": {k: round(v) for k, v in rate.items()},
        "fraction_of_step_only": {
            k: round(rate[k] / rate["step_only"], 3)
            for k in ("streaming", "streaming_overlapped", "from_cache")
        },
    }


def sweep(model: Any, opts: argparse.Namespace, layer: int, work: Path) -> dict[str, Any]:
    options = DemoOptions(model=opts.model, training_tokens=opts.tokens, batch_tokens=opts.batch)
    grid = [(a, k) for a in opts.architectures for k in opts.ks]

    def train_all(cache: Path | None) -> None:
        for architecture, k in grid:
            extra = {} if cache is None else {"cached_activations_path": str(cache)}
            cfg = layer_config(model, architecture, options, layer, None, k=k, **extra)
            PairedTrainingRunner(
                cfg, override_model=model, override_dataset=zoo.load_corpus("train")
            ).run()

    streaming = timed(lambda: train_all(None))
    folder = work / "sweep_cache"
    caching = timed(lambda: write_cache(model, opts, layer, folder, "float32"))
    from_cache = timed(lambda: train_all(folder))
    return {
        "layers": [f"{a}-k{k}" for a, k in grid],
        "seconds": _rounded(
            {
                "streaming": streaming,
                "cache": caching,
                "from_cache": from_cache,
                "cache_and_train": caching + from_cache,
            }
        ),
        "speed_up": round(streaming / (caching + from_cache), 2),
    }


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-gelu")
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--ks", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--architectures", nargs="+", default=list(ARCHITECTURES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="benchmarks/results/cache_sweep.json")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    model = zoo.load(opts.model)
    layer = zoo.default_layer(opts.model)
    with tempfile.TemporaryDirectory(prefix="cache_sweep-") as tmp:
        work = Path(tmp)
        size = cache_size(model, opts, layer, work)
        result = {
            "model": opts.model,
            "layer": layer,
            "tokens": opts.tokens,
            "batch_tokens": opts.batch,
            "size": size,
            "throughput": throughput(model, opts, layer, work / "size_float32"),
            "sweep": sweep(model, opts, layer, work),
        }
    write_result(opts.out, result)


if __name__ == "__main__":
    main()
