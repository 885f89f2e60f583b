"""The ``mxd-saelens`` command line.

Every command's flags are generated from dataclasses with help text and defaults. ``train`` uses
SAELens's own ``LanguageModelSAERunnerConfig``, with ``--architecture`` choosing the layer's
config class from SAELens's registry (so ``--architecture mxd`` exposes ``--n_experts``, ``--k``,
``--glu`` …) and :class:`TrainOptions` saying which MLP is replaced.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, make_dataclass
from dataclasses import field as dataclass_field
from dataclasses import fields as dataclass_fields
from functools import partial
from typing import Any

from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainingSAEConfig
from simple_parsing import field, subgroups
from simple_parsing.helpers import choice

import mxd_saelens  # noqa: F401  (registers the architectures)
from mxd_saelens import zoo
from mxd_saelens.cli.flag_help import GROUP_HELP, help_for
from mxd_saelens.cli.parsing import CommandParser, UserError, parse_options
from mxd_saelens.data.hooks import MLPHookMismatch, layer_of
from mxd_saelens.saes.traits import PAIRED_ARCHITECTURES
from mxd_saelens.training.config import fields_from_model
from mxd_saelens.zoo import ZooFileError

DEFAULT_MODEL = "tiny-gelu"


@dataclass
class TrainOptions:
    """Which MLP the layer replaces. The other flags are the fields of SAELens's
    LanguageModelSAERunnerConfig and of the layer's config."""

    architecture: str = choice(*PAIRED_ARCHITECTURES, default="mxd")
    """The layer's architecture (only those that replace an MLP)."""
    layer: int | None = None
    """L, the block whose MLP is replaced: sets both hooks (blocks.L.ln2.hook_normalized →
    blocks.L.hook_mlp_out), d_in, d_out and an MxD's d_hidden, activation and glu from the
    model's config. Needed unless --hook_name names a block's hook."""
    match_transcoder_width: int | None = None
    """W: size the layer (an MxD's n_experts, a transcoder's d_sae) at the parameter count of a
    width-W TopK transcoder on the same MLP."""
    hook_name_out: str | None = None
    """The MLP output the layer learns to reproduce; None: blocks.L.hook_mlp_out of the block
    the input hook is in."""
    check_mlp_hooks: bool = True
    """Before training, check that block L's own MLP maps the input hook to the output hook;
    False trains on a pair of hooks the MLP does not connect."""


def _given(args: Sequence[str]) -> dict[str, str | None]:
    """The ``--name`` flags present in ``args``, with their value when one follows."""
    given: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            nxt = args[i + 1] if i + 1 < len(args) else None
            given[name] = value or (nxt if nxt is not None and not nxt.startswith("--") else None)
    return given


def _wants_help(args: Sequence[str]) -> bool:
    return not args or "-h" in args or "--help" in args


def _train_options(args: Sequence[str]) -> TrainOptions:
    """The :class:`TrainOptions` among ``args``, before the full parser can be built."""
    parser = CommandParser(prog="mxd-saelens train", add_help=False)
    parser.add_arguments(TrainOptions, dest="options")
    return parser.parse_known_args(list(args))[0].options


def _layer_fields(options: TrainOptions, given: dict[str, Any], help_only: bool) -> dict:
    """Both hooks and the layer's shape, from the model's config and the block, for what the
    flags do not give; nothing but the model's name when only the help is asked for."""
    model = given.get("model_name") or DEFAULT_MODEL
    layer = options.layer
    if layer is None and given.get("hook_name"):
        layer = layer_of(str(given["hook_name"]))
    if layer is None:
        if help_only:
            return {"model_name": model}
        raise UserError(
            f"say which MLP to replace: --layer L (block L of {model}), or --hook_name "
            "blocks.L.<hook> (SAELens's default hook is not an MLP's input)"
        )
    from_model = fields_from_model(
        options.architecture,
        layer,
        options.match_transcoder_width,
        {**given, "model_name": model},
    )
    return {"model_name": model, **from_model}


def _default_dataset(model: str) -> str:
    return "zoo" if model in zoo.list_models() else ""


def train_flag_help(dest: str) -> str | None:
    """The help sentence of a ``train`` flag taken from SAELens's configs; None for this
    package's own flags (:class:`TrainOptions`, the layer configs), which keep their docstrings."""
    if dest.startswith("options."):
        return None
    return help_for(dest)


def _train_parser(
    architecture: str, fields: dict[str, Any], given: dict[str, Any]
) -> CommandParser:
    """The full ``train`` parser: :class:`TrainOptions` and SAELens's runner config, whose
    defaults are the values read from the model."""
    config_class = SAE_TRAINING_CLASS_REGISTRY[architecture][1]
    sae_names = {f.name for f in dataclass_fields(config_class) if f.init}
    sae_defaults = {k: v for k, v in fields.items() if k in sae_names and k not in given}
    if "n_experts" in sae_defaults or "d_sae" in sae_defaults:
        sae_defaults.setdefault("k", 32)
    cli_class = make_dataclass(
        "TrainCommand",
        [
            ("model_name", str, dataclass_field(default=fields["model_name"])),
            (
                "hook_name",
                str,
                dataclass_field(default=fields.get("hook_name", "")),
            ),
            (
                "dataset_path",
                str,
                dataclass_field(default=_default_dataset(fields["model_name"])),
            ),
            (
                "sae",
                TrainingSAEConfig,
                # one choice: --architecture (read first) picked it; the defaults are the model's
                subgroups(
                    {architecture: partial(config_class, **sae_defaults)}, default=architecture
                ),
            ),
        ],
        bases=(LanguageModelSAERunnerConfig,),
    )
    cli_class.__doc__ = "SAELens's LanguageModelSAERunnerConfig, and the layer's config."
    parser = CommandParser(
        prog="mxd-saelens train",
        description=TRAIN_DESCRIPTION,
        flag_help=train_flag_help,
        group_help=GROUP_HELP,
    )
    parser.add_arguments(TrainOptions, dest="options")
    parser.add_arguments(cli_class, dest="cfg")
    return parser


def parse_train_args(
    args: Sequence[str],
) -> tuple[LanguageModelSAERunnerConfig[Any], str | None, bool]:
    """The runner config, the output hook and whether to check the hook pair against the
    model's MLP, from command-line flags. What the flags leave out of the hooks and the layer's
    shape is read from the model's config for the block ``--layer`` (or ``--hook_name``) names;
    flags given explicitly win."""
    args = list(args) or ["--help"]
    given = _given(args)
    fields, parser = train_parser(args)
    parsed = parser.parse_args(args)
    cfg, options = parsed.cfg, parsed.options
    if cfg.cached_activations_path is not None and "dataset_path" not in given:
        cfg.dataset_path = ""  # the cache's, which the runner reads from its manifest
    elif not cfg.dataset_path:  # SAELens would find out only after loading the model
        raise UserError(f"say what to train on: --dataset_path (no default for {cfg.model_name})")
    return cfg, options.hook_name_out or fields.get("hook_name_out"), options.check_mlp_hooks


def train_parser(args: Sequence[str]) -> tuple[dict[str, Any], CommandParser]:
    """The fields read from the model for ``args`` and the ``train`` parser built on them."""
    options = _train_options(args)
    given = _given(args)
    fields = _layer_fields(options, given, help_only=_wants_help(args))
    return fields, _train_parser(options.architecture, fields, given)


TRAIN_DESCRIPTION = (
    "Train a layer that replaces a TransformerLens model's MLP, through SAELens's runner. "
    "--layer L picks the MLP; the hooks, d_in, d_out and an MxD's d_hidden, activation and glu "
    "are read from the model's config unless given."
)


def train(args: Sequence[str]) -> None:
    from mxd_saelens.training.runner import PairedTrainingRunner

    cfg, hook_name_out, check_mlp_hooks = parse_train_args(args)
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks
    if main_process:
        print(
            f"replacing {cfg.model_name}'s MLP: {cfg.hook_name} → {hook_name_out}", file=sys.stderr
        )
    try:
        PairedTrainingRunner(
            cfg, hook_name_out=hook_name_out, check_mlp_hooks=check_mlp_hooks
        ).run()
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if cfg.output_path and main_process:
        print(f"saved to {cfg.output_path}")
    if main_process:
        from mxd_saelens.evaluation.report import peak_memory_line

        print(peak_memory_line())


@dataclass
class EvalOptions:
    """What to evaluate, on which text."""

    layers: list[str] = field(positional=True, nargs="+", metavar="LAYER")  # noqa: RUF009
    """Folders of saved layers."""
    model: str | None = None
    """Model name (default: the first layer's model_name)."""
    dataset_path: str = "zoo:heldout"
    """Held-out text: the bundled corpus's split, a local file or folder, or a hub dataset
    (--dataset, its old name, still works)."""
    n_sequences: int | None = None
    """Evaluate on the first N sequences (default: every full sequence of the dataset)."""
    context_size: int = 128
    """Tokens per sequence."""
    batch_size: int = 8
    """Sequences per forward."""
    reference: str | None = None
    """Compare every layer with this one, a folder given above (default: all pairs for up to
    four layers, else the first layer)."""
    device: str = "cpu"
    """Device for the model and the layers."""
    out_dir: str = "eval_output"
    """Folder for results.json and report.html."""
    specialisation: bool = True
    """Also probe each layer's codes on the bundled corpus's language labels and measure how
    its experts (or latents) are used (about 30 s a layer)."""


EVAL_DESCRIPTION = (
    "Splice saved layers into their model and measure next-token loss, with standard errors "
    "over sequences and paired comparisons between the layers."
)


def evaluate(args: Sequence[str]) -> None:
    from mxd_saelens.data.sources import load_model_of_layers
    from mxd_saelens.data.tokens import token_sequences
    from mxd_saelens.evaluation.evaluate_and_report import evaluate_and_report
    from mxd_saelens.saes.loading import load_layer

    opts = parse_options(EvalOptions, args, "mxd-saelens eval", EVAL_DESCRIPTION)
    if opts.reference is not None and opts.reference not in opts.layers:
        raise UserError(f"--reference {opts.reference!r} is not one of the layers given")
    layers = {path: load_layer(path, device=opts.device) for path in opts.layers}
    model_name = opts.model or next(iter(layers.values())).cfg.metadata.model_name
    if not model_name:
        raise UserError("the layers do not record their model; pass --model")
    model = load_model_of_layers(layers.values(), model_name, device=opts.device)
    tokens = token_sequences(model, opts.dataset_path, opts.context_size, opts.n_sequences)
    evaluate_and_report(
        model,
        layers,
        tokens.to(opts.device),
        opts.out_dir,
        title=f"{model_name} splice evaluation",
        batch_size=opts.batch_size,
        specialisation=opts.specialisation,
        reference=opts.reference,
    )


CACHE_DESCRIPTION = (
    "Run the model once over --training_tokens tokens and write each block's MLP input and "
    "output to disk, for training layers with --cached_activations_path (a sweep without a "
    "model forward per layer)."
)


def cache(args: Sequence[str]) -> None:
    from mxd_saelens.data.cache_writer import CacheConfig, cache_paired_activations

    cfg = parse_options(CacheConfig, args, "mxd-saelens cache", CACHE_DESCRIPTION)
    if not cfg.dataset_path:
        raise UserError(f"say what to run the model on: --dataset_path (none for {cfg.model_name})")
    out = cache_paired_activations(cfg)
    print(f"cached {cfg.training_tokens} tokens of blocks {cfg.layers} to {out}")


def demo(args: Sequence[str]) -> None:
    from mxd_saelens.demo import DemoOptions, run_demo

    description = (
        "Train, splice, compare and save an MxD and its matched transcoders on the bundled model."
    )
    run_demo(parse_options(DemoOptions, args, "mxd-saelens demo", description))


def probe(args: Sequence[str]) -> None:
    from mxd_saelens.cli.research import probe as run_probe

    run_probe(args)


def steer(args: Sequence[str]) -> None:
    from mxd_saelens.cli.research import steer as run_steer

    run_steer(args)


def dashboard(args: Sequence[str]) -> None:
    from mxd_saelens.cli.research import dashboard as run_dashboard

    run_dashboard(args)


def upload(args: Sequence[str]) -> None:
    from mxd_saelens.hub.upload import upload as run_upload

    run_upload(args)


# name → (what it does, in one line; the function that runs it)
COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], None]]] = {
    "demo": ("train, splice and compare an MxD and matched transcoders on the bundled model", demo),
    "train": ("train one layer that replaces a model's MLP, through SAELens's runner", train),
    "cache": ("run the model once and store its MLPs' inputs and outputs for training", cache),
    "eval": ("splice saved layers into their model and compare their next-token loss", evaluate),
    "probe": ("sparse probing of saved layers' codes (and the MLP's neurons)", probe),
    "steer": ("steer generation with one expert or latent of a saved layer", steer),
    "dashboard": ("an offline HTML page per expert or latent: firing, contexts, tokens", dashboard),
    "upload": ("publish saved layers on the Hugging Face hub with a model card", upload),
}

# mistakes in what was asked for, printed as one line; anything else is a bug and raises
# (MXD_SAELENS_TRACEBACK=1 shows the traceback instead)
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    ValueError,  # config validation (SAELens's and this package's), MLPHookMismatch
    MLPHookMismatch,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    ZooFileError,
)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mxd-saelens COMMAND [--help | flags]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (text, _) in COMMANDS.items()]
    lines += ["", "mxd-saelens COMMAND --help lists the command's flags."]
    return "\n".join(lines)


def _exit_code(stop: SystemExit) -> int:
    """``--help`` exits 0; a bare ``sys.exit(message)`` is a failure."""
    if stop.code is None or isinstance(stop.code, int):
        return stop.code or 0
    print(f"error: {stop.code}", file=sys.stderr)
    return 1


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
    except SystemExit as stop:
        return _exit_code(stop)
    except USER_ERRORS as error:
        if os.environ.get("MXD_SAELENS_TRACEBACK"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
