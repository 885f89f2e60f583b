"""Training throughput with the model forward against the layers' steps alone.

End to end: the demo's three matched layers (MxD, TopK and skip transcoder, k = 32) trained from
one shared forward by ``MultiPairedTrainingRunner`` over ``--tokens`` tokens, everything
included (tokenising, the model forward, shuffling, the three steps). Step only: the same three
layers, fresh, stepped by the same trainer class on batches captured beforehand, so only
``trainer.step`` is timed. Both in this process, one after the other, with the same threads.

    python benchmarks/throughput.py --tokens 409600
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import step_only_seconds, write_result
from mxd_saelens import zoo
from mxd_saelens.demo import DemoOptions, layer_config
from mxd_saelens.training.runner import MultiPairedTrainingRunner

ARCHITECTURES = ("mxd", "topk_transcoder", "topk_skip_transcoder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-gelu")
    parser.add_argument("--tokens", type=int, default=409_600)
    parser.add_argument("--batch_tokens", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default="benchmarks/results/throughput.json")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    model = zoo.load(opts.model)
    layer = zoo.default_layer(opts.model)
    options = DemoOptions(
        model=opts.model, training_tokens=opts.tokens, batch_tokens=opts.batch_tokens
    )
    configs = {a: layer_config(model, a, options, layer, None) for a in ARCHITECTURES}
    runner = MultiPairedTrainingRunner(
        configs, override_model=model, override_dataset=zoo.load_corpus("train")
    )
    started = time.perf_counter()
    runner.run()
    end_to_end = time.perf_counter() - started

    # the same number of steps on batches drawn beforehand: the layers' steps alone
    n_steps = opts.tokens // opts.batch_tokens
    step_seconds = step_only_seconds(configs, runner.activations_store, n_steps)
    steps_only = sum(step_seconds.values())
    result = {
        "model": opts.model,
        "layer": layer,
        "layers": list(ARCHITECTURES),
        "tokens": opts.tokens,
        "batch_tokens": opts.batch_tokens,
        "end_to_end_seconds": round(end_to_end, 2),
        "end_to_end_tokens_per_second": round(opts.tokens / end_to_end),
        "step_only_seconds": {k: round(v, 2) for k, v in step_seconds.items()},
        "step_only_tokens_per_second": round(opts.tokens / steps_only),
        "step_only_tokens_per_second_per_layer": {
            k: round(opts.tokens / v) for k, v in step_seconds.items()
        },
        "end_to_end_over_step_only": round(steps_only / end_to_end, 3),
    }
    print(result)
    write_result(opts.out, result)


if __name__ == "__main__":
    main()
