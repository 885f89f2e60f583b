"""Train a grid of parameter-matched layers on one bundled model's MLP, all from one shared model
forward, and record where they went and how long it took.

    python benchmarks/train_layers.py --model tiny-gelu --architectures mxd topk_transcoder \\
        --ks 32 --lrs 1e-3 3e-3 1e-2 --tokens 2000000 --work_dir benchmarks/layers/lr_sweep

Every layer of the grid (architectures × ks × lrs, plus ``--extra`` layers) is saved to
``<work_dir>/<name>``; ``--snapshots`` also saves each layer after that many tokens to
``<work_dir>/snapshots/<tokens>/<name>``. ``<work_dir>/manifest.json`` records the command, the
layer configs, the wall time and the end-to-end tokens/s; ``benchmarks/evaluate_layers.py``
splices what was saved.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import environment
from mxd_saelens import zoo
from mxd_saelens.data.paired_store import PairedActivationsStore
from mxd_saelens.demo import DemoOptions, layer_config, train_layers


def parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def grid(opts: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """name → {architecture, field overrides}."""
    specs: dict[str, dict[str, Any]] = {}
    for architecture in opts.architectures:
        for k in opts.ks:
            for lr in opts.lrs:
                name = f"{architecture}-k{k}" + (f"-lr{lr:g}" if len(opts.lrs) > 1 else "")
                specs[name] = {"architecture": architecture, "k": k, "lr": lr}
    for extra in opts.extra:
        # name:architecture:field=value,field=value
        name, architecture, *rest = extra.split(":")
        overrides = dict(item.split("=", 1) for item in ",".join(rest).split(",") if item)
        specs[name] = {
            "architecture": architecture,
            "k": opts.ks[0],
            "lr": opts.lrs[0],
            **{key: parse_value(value) for key, value in overrides.items()},
        }
    return specs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-gelu")
    parser.add_argument("--architectures", nargs="*", default=["mxd", "topk_transcoder"])
    parser.add_argument("--ks", nargs="+", type=int, default=[32])
    parser.add_argument("--lrs", nargs="+", type=float, default=[3e-3])
    parser.add_argument("--extra", nargs="*", default=[], help="name:architecture:field=value,…")
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--batch_tokens", type=int, default=2048)
    parser.add_argument("--shuffle_tokens", type=int, default=131_072)
    parser.add_argument(
        "--min_shuffle_tokens",
        type=int,
        default=None,
        help="override the store's floor on the shuffle buffer (to measure weak mixing)",
    )
    parser.add_argument(
        "--lr_warm_up_steps", type=int, default=None, help="default: 5 %% of the steps"
    )
    parser.add_argument("--snapshots", nargs="*", type=int, default=[])
    parser.add_argument("--checkpoint_path", default=None, help="where checkpoints go")
    parser.add_argument(
        "--save_final_checkpoint",
        action="store_true",
        help="keep a resumable checkpoint of the finished run (to train on past --tokens later)",
    )
    parser.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help="continue a run's layers (any subset of its grid) from its checkpoint",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work_dir", required=True)
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    if opts.min_shuffle_tokens is not None:
        PairedActivationsStore.min_shuffle_tokens = opts.min_shuffle_tokens

    work = Path(opts.work_dir)
    model = zoo.load(opts.model)
    layer = zoo.default_layer(opts.model)
    options = DemoOptions(
        model=opts.model,
        layer=layer,
        training_tokens=opts.tokens,
        batch_tokens=opts.batch_tokens,
        shuffle_tokens=opts.shuffle_tokens,
    )
    specs = grid(opts)
    configs = {
        name: layer_config(
            model,
            spec["architecture"],
            options,
            layer,
            str(work / name),
            **{k: v for k, v in spec.items() if k != "architecture"},
        )
        for name, spec in specs.items()
    }
    for cfg in configs.values():
        if opts.lr_warm_up_steps is not None:
            cfg.lr_warm_up_steps = opts.lr_warm_up_steps
        cfg.checkpoint_path = opts.checkpoint_path  # as given: no random suffix
        cfg.save_final_checkpoint = opts.save_final_checkpoint
        cfg.resume_from_checkpoint = opts.resume_from_checkpoint
    manifest = {
        **environment(),
        "model": opts.model,
        "layer": layer,
        "tokens_per_layer": opts.tokens,
        "batch_tokens": opts.batch_tokens,
        "shuffle_tokens": opts.shuffle_tokens,
        "min_shuffle_tokens": PairedActivationsStore.min_shuffle_tokens,
        "snapshots": sorted(opts.snapshots),
        "resumed_from": opts.resume_from_checkpoint,
        "seconds": None,  # still running: snapshots can be evaluated already
        "layers": specs,
    }
    work.mkdir(parents=True, exist_ok=True)
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"{opts.model} layer {layer}: {len(configs)} layers, {opts.tokens:,} tokens each")
    started = time.perf_counter()
    train_layers(model, configs, snapshot_tokens=opts.snapshots, snapshot_path=work / "snapshots")
    seconds = time.perf_counter() - started
    manifest["seconds"] = round(seconds, 1)
    manifest["end_to_end_tokens_per_second"] = round(opts.tokens / seconds)
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"trained in {seconds:.0f} s; wrote {work / 'manifest.json'}")


if __name__ == "__main__":
    main()
