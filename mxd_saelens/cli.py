"""The ``mxd-saelens`` command line.

``train`` is generated from the same config dataclasses as the Python API: SAELens's
``LanguageModelSAERunnerConfig`` with ``--architecture`` choosing the layer's config class from
SAELens's registry (so ``--architecture mxd`` exposes ``--n_experts``, ``--k``, ``--glu`` …).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import field, make_dataclass
from dataclasses import fields as dataclass_fields
from functools import partial
from typing import Any

from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAEConfig
from simple_parsing import ArgumentParser, subgroups

import mxd_saelens  # noqa: F401  (registers the architectures)
from mxd_saelens import zoo
from mxd_saelens.config import fields_from_model
from mxd_saelens.hooks import layer_of
from mxd_saelens.model_fields import PAIRED_ARCHITECTURES, check_paired

DEFAULT_MODEL = "tiny-gelu"


class UserError(ValueError):
    """A mistake in what the user asked for: printed as one ``error:`` line."""


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _given(args: Sequence[str]) -> dict[str, str | None]:
    """The ``--name`` flags present in ``args``, with their value when one follows."""
    given: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            nxt = args[i + 1] if i + 1 < len(args) else None
            given[name] = value or (nxt if nxt is not None and not nxt.startswith("--") else None)
    return given


def _extras() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--architecture", default="mxd")
    parser.add_argument("--layer", type=int, default=None)
    parser.add_argument("--match_transcoder_width", type=int, default=None)
    parser.add_argument("--hook_name_out", default=None)
    parser.add_argument("--check_mlp_hooks", type=_bool, default=True)
    return parser


def _layer_fields(architecture: str, known: argparse.Namespace, given: dict[str, Any]) -> dict:
    """Both hooks and the layer's shape, from the model's config and the block, for what the
    flags do not give."""
    model = given.get("model_name") or DEFAULT_MODEL
    layer = known.layer
    if layer is None and given.get("hook_name"):
        layer = layer_of(str(given["hook_name"]))
    if layer is None:
        if model not in zoo.list_models():
            raise UserError(
                f"say which MLP to replace: --layer L (block L of {model}), or --hook_name "
                "blocks.L.<hook>"
            )
        layer = zoo.default_layer(model)
    try:
        return {
            "model_name": model,
            **fields_from_model(
                architecture, layer, known.match_transcoder_width, {**given, "model_name": model}
            ),
        }
    except ValueError as error:
        raise UserError(str(error)) from None


def parse_train_args(
    args: Sequence[str],
) -> tuple[LanguageModelSAERunnerConfig[Any], str | None, bool]:
    """The runner config, the output hook and whether to check the hook pair against the
    model's MLP, from command-line flags. What the flags leave out of the hooks and the layer's
    shape is read from the model's config (``--layer``, or the bundled model's default block)."""
    known, rest = _extras().parse_known_args(list(args))
    try:
        architecture = check_paired(known.architecture)
    except ValueError as error:
        raise UserError(str(error)) from None
    given = _given(rest)
    fields = _layer_fields(architecture, known, given)
    config_class = SAE_TRAINING_CLASS_REGISTRY[architecture][1]
    sae_names = {f.name for f in dataclass_fields(config_class) if f.init}
    sae_defaults = {k: v for k, v in fields.items() if k in sae_names and k not in given}
    if "n_experts" in sae_defaults or "d_sae" in sae_defaults:
        sae_defaults.setdefault("k", 32)
    cli_class = make_dataclass(
        "TrainCommand",
        [
            ("model_name", str, field(default=fields["model_name"])),
            ("hook_name", str, field(default=fields.get("hook_name", ""))),
            (
                "sae",
                TrainingSAEConfig,
                # one choice: --architecture (read above) picked it; the defaults are the model's
                subgroups(
                    {architecture: partial(config_class, **sae_defaults)}, default=architecture
                ),
            ),
        ],
        bases=(LanguageModelSAERunnerConfig,),
    )
    parser = ArgumentParser(
        prog="mxd-saelens train",
        description=TRAIN_DESCRIPTION.format(model=fields["model_name"]),
    )
    parser.add_arguments(cli_class, dest="cfg")
    cfg = parser.parse_args(rest or ["--help"]).cfg
    hook_name_out = known.hook_name_out or fields.get("hook_name_out")
    return cfg, hook_name_out, known.check_mlp_hooks


TRAIN_DESCRIPTION = (
    "Train a layer that replaces a TransformerLens model's MLP, through SAELens's runner. "
    "Flags of this command beside SAELens's configs: --architecture "
    + "/".join(PAIRED_ARCHITECTURES)
    + " (default mxd); --layer L, the block whose MLP is replaced (default: the bundled "
    "model's default block); --match_transcoder_width W, the size at a width-W TopK "
    "transcoder's parameter count; --hook_name_out (default blocks.L.hook_mlp_out); "
    "--check_mlp_hooks False, to train on a hook pair the model's own MLP does not connect. "
    "Hooks, d_in, d_out and an MxD's d_hidden, activation and glu default to {model}'s MLP."
)


def train(args: Sequence[str]) -> None:
    from mxd_saelens.runner import PairedTrainingRunner

    cfg, hook_name_out, check_mlp_hooks = parse_train_args(args)
    print(f"replacing {cfg.model_name}'s MLP: {cfg.hook_name} → {hook_name_out}", file=sys.stderr)
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


def dashboard(args: Sequence[str]) -> None:
    from mxd_saelens.dashboard import command

    command(args)


# name → (what it does, in one line; the function that runs it)
COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], None]]] = {
    "demo": ("train, splice and compare an MxD and matched transcoders on the bundled model", demo),
    "train": ("train one layer that replaces a model's MLP, through SAELens's runner", train),
    "eval": ("splice saved layers into their model and compare their next-token loss", evaluate),
    "probe": ("sparse probing of saved layers' codes (and the MLP's neurons)", probe),
    "steer": ("steer generation with one expert or latent of a saved layer", steer),
    "dashboard": ("an offline HTML page per expert or latent: firing, contexts, tokens", dashboard),
}

# mistakes in what was asked for, printed as one line; anything else is a bug and raises
# (MXD_SAELENS_TRACEBACK=1 shows the traceback instead)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mxd-saelens COMMAND [--help | flags]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (text, _) in COMMANDS.items()]
    lines += ["", "mxd-saelens COMMAND --help lists the command's flags."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}; choose one of: {', '.join(COMMANDS)}",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        COMMANDS[argv[0]][1](argv[1:])
    except KeyboardInterrupt as stop:
        print(str(stop) or "interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as error:
        if os.environ.get("MXD_SAELENS_TRACEBACK"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
