"""Training throughput, model forward included: tokens per second through the paired runner
for the MxD and its parameter-matched TopK transcoder on a bundled model.

    python benchmarks/throughput.py --tokens 200000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result
from mxd_saelens import zoo
from mxd_saelens.config import runner_config
from mxd_saelens.demo import matched_layer_fields
from mxd_saelens.hooks import resolve_mlp_hooks
from mxd_saelens.runner import PairedTrainingRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-gelu")
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--batch_tokens", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    model = zoo.load(opts.model)
    hooks = resolve_mlp_hooks(model, layer=zoo.default_layer(opts.model))
    corpus = zoo.load_corpus("train")
    rows = {}
    for architecture in ("mxd", "topk_transcoder"):
        cfg = runner_config(
            architecture,
            model_name=opts.model,
            hook_name=hooks.hook_in,
            d_in=hooks.d_in,
            context_size=128,
            training_tokens=opts.tokens,
            train_batch_size_tokens=opts.batch_tokens,
            store_batch_size_prompts=opts.batch_tokens // 128,
            n_batches_in_buffer=8,
            log_to_wandb=False,
            checkpoint_path=None,
            output_path=None,
            verbose=False,
            **matched_layer_fields(model, architecture, opts.k, 32),
        )
        runner = PairedTrainingRunner(cfg, override_model=model, override_dataset=corpus)
        started = time.perf_counter()
        runner.run()
        seconds = time.perf_counter() - started
        rows[architecture] = {
            "tokens": opts.tokens,
            "seconds": round(seconds, 2),
            "tokens_per_second": round(opts.tokens / seconds),
            "parameters": sum(p.numel() for p in runner.sae.parameters()),
        }
        print(architecture, rows[architecture])
    rows["mxd_over_transcoder_time"] = round(
        rows["mxd"]["seconds"] / rows["topk_transcoder"]["seconds"], 3
    )
    write_result(
        opts.out, {"model": opts.model, "layer": hooks.layer, "k": opts.k, "results": rows}
    )


if __name__ == "__main__":
    main()
