"""The ``mxd-saelens`` command line.

``train`` is generated from the same config dataclasses as the Python API: SAELens's
``LanguageModelSAERunnerConfig`` with ``--architecture`` choosing the layer's config class from
SAELens's registry (so ``--architecture mxd`` exposes ``--n_experts``, ``--k``, ``--glu`` …).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import make_dataclass
from functools import partial
from typing import Any

from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAEConfig
from simple_parsing import ArgumentParser, subgroups

import mxd_saelens  # noqa: F401  (registers the architectures)

# defaults that make each architecture constructible before the user's flags are applied
_PLACEHOLDER_SHAPE = {"mxd": {"d_in": 512, "n_experts": 1024}}


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def parse_train_args(
    args: Sequence[str],
) -> tuple[LanguageModelSAERunnerConfig[Any], str | None, bool]:
    """The runner config, the optional output hook and whether to check the hook pair against
    the model's MLP, from command-line flags."""
    extra = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    extra.add_argument("--hook_name_out", default=None)
    extra.add_argument("--check_mlp_hooks", type=_bool, default=True)
    known, rest = extra.parse_known_args(list(args))
    choices = {
        name: partial(config_class, **_PLACEHOLDER_SHAPE.get(name, {"d_in": 512, "d_sae": 1024}))
        for name, (_, config_class) in SAE_TRAINING_CLASS_REGISTRY.items()
    }
    cli_class = make_dataclass(
        "TrainCommand",
        [("sae", TrainingSAEConfig, subgroups(choices, default="mxd", alias="--architecture"))],
        bases=(LanguageModelSAERunnerConfig,),
    )
    parser = ArgumentParser(
        prog="mxd-saelens train",
        description="Train a layer that replaces a TransformerLens model's MLP. Extra flags: "
        "--hook_name_out (default: blocks.L.hook_mlp_out of the input hook's block); "
        "--check_mlp_hooks False to train on a hook pair the model's own MLP does not connect.",
    )
    parser.add_arguments(cli_class, dest="cfg")
    cfg = parser.parse_args(rest or ["--help"]).cfg
    return cfg, known.hook_name_out, known.check_mlp_hooks


def train(args: Sequence[str]) -> None:
    from mxd_saelens.runner import PairedTrainingRunner

    cfg, hook_name_out, check_mlp_hooks = parse_train_args(args)
    PairedTrainingRunner(cfg, hook_name_out=hook_name_out, check_mlp_hooks=check_mlp_hooks).run()
    if cfg.output_path:
        print(f"saved to {cfg.output_path}")


def evaluate(args: Sequence[str]) -> None:
    from mxd_saelens.evaluation import evaluate_layers
    from mxd_saelens.layers import load_layer
    from mxd_saelens.report import format_comparisons, format_table, write_report
    from mxd_saelens.sources import load_language_model
    from mxd_saelens.tokens import token_sequences

    parser = argparse.ArgumentParser(
        prog="mxd-saelens eval",
        description="Splice saved layers into their model and measure next-token loss, with "
        "standard errors over sequences and paired comparisons between the layers.",
    )
    parser.add_argument("layers", nargs="+", help="folders of saved layers")
    parser.add_argument("--model", help="model name (default: the first layer's model_name)")
    parser.add_argument(
        "--dataset", default="zoo:heldout", help="held-out text (default: %(default)s)"
    )
    parser.add_argument(
        "--n_sequences",
        type=int,
        default=None,
        help="evaluate on the first N sequences (default: every full sequence of the dataset)",
    )
    parser.add_argument("--context_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument(
        "--reference",
        default=None,
        help="compare every layer with this one (a folder given above; default: all pairs "
        "for up to four layers, else the first layer)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out_dir", default="eval_output")
    opts = parser.parse_args(list(args))
    if opts.reference is not None and opts.reference not in opts.layers:
        parser.error(f"--reference {opts.reference!r} is not one of the layers given")

    layers = {path: load_layer(path, device=opts.device) for path in opts.layers}
    model_name = opts.model or next(iter(layers.values())).cfg.metadata.model_name
    if not model_name:
        parser.error("the layers do not record their model; pass --model")
    model = load_language_model(model_name, device=opts.device)
    tokens = token_sequences(model, opts.dataset, opts.context_size, opts.n_sequences)
    result = evaluate_layers(model, layers, tokens.to(opts.device), batch_size=opts.batch_size)
    comparisons = result.comparisons(opts.reference)
    print(format_table(result.rows))
    if comparisons:
        print()
        print(format_comparisons(comparisons))
    json_path, html_path = write_report(
        result.rows,
        opts.out_dir,
        title=f"{model_name} splice evaluation",
        comparisons=comparisons,
    )
    print(f"wrote {json_path} and {html_path}")


def demo(args: Sequence[str]) -> None:
    from mxd_saelens.demo import DemoOptions, run_demo

    parser = ArgumentParser(
        prog="mxd-saelens demo",
        description="Train, splice, compare and save an MxD and its matched transcoders on the "
        "bundled model.",
    )
    parser.add_arguments(DemoOptions, dest="options")
    run_demo(parser.parse_args(list(args)).options)


def probe(args: Sequence[str]) -> None:
    from mxd_saelens.research_cli import probe as run_probe

    run_probe(args)


def steer(args: Sequence[str]) -> None:
    from mxd_saelens.research_cli import steer as run_steer

    run_steer(args)


COMMANDS: dict[str, Callable[[Sequence[str]], None]] = {
    "demo": demo,
    "train": train,
    "eval": evaluate,
    "probe": probe,
    "steer": steer,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        print(f"usage: mxd-saelens {{{names}}} [--help | flags]", file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown command {argv[0]!r}; choose one of: {names}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    try:
        COMMANDS[argv[0]](argv[1:])
    except KeyboardInterrupt as stop:
        print(str(stop) or "interrupted", file=sys.stderr)
        return 130
    return 0
