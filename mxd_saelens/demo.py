"""The whole product on the bundled default, in minutes on a CPU.

Trains an MxD and the parameter-matched TopK transcoder and TopK skip transcoder on one MLP of
a bundled model, all three from one shared model forward, splices each into the model on the
whole held-out split, prints a table with standard errors and the paired comparison, writes JSON
and an HTML frontier report with each layer's specialisation (probe F1, expert usage) beside its
ΔCE, saves every layer in SAELens's format and loads them back with
``SAE.load_from_disk``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from torch import nn

from mxd_saelens import zoo
from mxd_saelens.data.hooks import mlp_shape, resolve_mlp_hooks
from mxd_saelens.data.tokens import token_sequences
from mxd_saelens.evaluation.evaluate_and_report import evaluate_and_report
from mxd_saelens.evaluation.loss import Evaluation
from mxd_saelens.saes.params import matched_size
from mxd_saelens.saes.traits import reads_mlp_shape
from mxd_saelens.training.config import runner_config
from mxd_saelens.training.runner import MultiPairedTrainingRunner

# Each architecture's recipe at the demo's budget (k = 32, 2M tokens, tiny-gelu block 2), chosen
# by one procedure for all (benchmarks/grid.py → benchmarks/results/grid_tiny-gelu_k32.json):
# the most faithful on validation among the candidates that keep their codes alive and readable
# (every selected layer met that floor at 2M tokens).
RECIPES: dict[str, dict[str, Any]] = {
    "mxd": {"lr": 3e-3, "init": "mlp_encoder", "balance_rate": 1e-2, "balance_mode": "revive"},
    "topk_transcoder": {"lr": 3e-3, "init": "mlp_encoder", "balance_rate": 0.0},
    "topk_skip_transcoder": {
        "lr": 3e-3,
        "init": "paper",
        "balance_rate": 1e-2,
        "balance_mode": "revive",
    },
}


def recipe(architecture: str, options: DemoOptions) -> dict[str, Any]:
    """The training fields of ``architecture``'s recipe; ``options.lr`` overrides its rate."""
    fields = dict(RECIPES.get(architecture, {"lr": 1e-2})) if options.use_recipes else {"lr": 1e-2}
    if options.lr is not None:
        fields["lr"] = options.lr
    return fields


@dataclass
class DemoOptions:
    model: str = "tiny-gelu"
    """A bundled model (see mxd_saelens.zoo.list_models())."""
    layer: int | None = None
    """The MLP to replace; default: the model's default layer."""
    training_tokens: int = 2_000_000
    """Tokens per layer (the MxD starts from D = 0 and is level with the transcoders around 1M
    tokens; by 2M its ΔCE is well under half the TopK transcoder's)."""
    k: int = 32
    """Active experts (MxD) or latents (transcoders) per token."""
    expansion: int = 32
    """Transcoder width as a multiple of d_model; the MxD is matched to it."""
    batch_tokens: int = 2048
    """Tokens per training step."""
    use_recipes: bool = True
    """Train each architecture with its selected recipe (``RECIPES``); False: with its config's
    defaults (for an MxD the paper's initialisation, with its dead experts revived) at ``lr``."""
    lr: float | None = None
    """Adam learning rate for every layer; None: each architecture's own selected recipe
    (``RECIPES``). Warm-up over the first twentieth of the steps, constant, then a linear decay
    over the last fifth. The paper's 1e-4 is for 480M tokens; short runs need more."""
    context_size: int = 128
    """Tokens per sequence, in training and evaluation."""
    eval_sequences: int | None = None
    """Held-out sequences to evaluate on; default: the whole held-out split (~2,400)."""
    shuffle_tokens: int = 131_072
    """Tokens pooled in the shuffle buffer (about 60 documents of the bundled corpus)."""
    architectures: tuple[str, ...] = ("mxd", "topk_transcoder", "topk_skip_transcoder")
    """The layers trained and compared, each parameter-matched to the transcoder's width."""
    specialisation: bool = True
    """Also probe each layer's codes and measure their usage (mxd_saelens.evaluation.specialisation):
    how specialised the experts are, beside how faithful the layer is (about 30 s a layer)."""
    out_dir: str = "demo_output"
    """Folder for the saved layers, results.json and report.html."""
    seed: int = 42
    """Seed of the layers' initialisation and the data order."""


def matched_layer_fields(model: Any, architecture: str, k: int, expansion: int) -> dict[str, Any]:
    """Layer config fields at the parameter count of a TopK transcoder with d_sae = expansion·d."""
    d = int(model.cfg.d_model)
    shape = mlp_shape(model)
    size = matched_size(architecture, d, d, shape["d_hidden"], shape["glu"], expansion * d)
    return {**size, "k": k, **(shape if reads_mlp_shape(architecture) else {})}


def layer_config(
    model: Any,
    architecture: str,
    options: DemoOptions,
    layer: int,
    output_path: str | None,
    **overrides: Any,
) -> Any:
    """The runner config of one matched layer; ``overrides`` set any field (k, lr …)."""
    hooks = resolve_mlp_hooks(model, layer=layer)
    store_prompts = max(1, options.batch_tokens // options.context_size)
    fields = {
        "model_name": options.model,
        "dataset_path": "zoo",  # the bundled corpus (train_layers passes its train split)
        "hook_name": hooks.hook_in,
        "hook_name_out": hooks.hook_out,
        "d_in": hooks.d_in,
        "d_out": hooks.d_out,
        "context_size": options.context_size,
        "training_tokens": options.training_tokens,
        "train_batch_size_tokens": options.batch_tokens,
        "store_batch_size_prompts": store_prompts,
        "n_batches_in_buffer": max(
            1, options.shuffle_tokens // (store_prompts * options.context_size)
        ),
        **recipe(architecture, options),
        "lr_warm_up_steps": max(1, options.training_tokens // options.batch_tokens // 20),
        "lr_decay_steps": max(1, options.training_tokens // options.batch_tokens // 5),
        "seed": options.seed,
        "log_to_wandb": False,
        "checkpoint_path": None,
        "output_path": output_path,
        # every position is trained on and spliced, BOS included
        "exclude_special_tokens": False,
        "model_from_pretrained_kwargs": {},  # a bundled model: no loading options to record
        "verbose": False,
        "n_eval_batches": 1,
        **matched_layer_fields(
            model, architecture, overrides.pop("k", options.k), options.expansion
        ),
    }
    fields.update(overrides)
    return runner_config(architecture, **fields)


def train_layers(
    model: Any, configs: dict[str, Any], **runner_options: Any
) -> dict[str, nn.Module]:
    """Train every configured layer from one shared forward over the bundled training split."""
    runner = MultiPairedTrainingRunner(
        configs, override_model=model, override_dataset=zoo.load_corpus("train"), **runner_options
    )
    return {name: layer.eval() for name, layer in runner.run().items()}


def train_matched(
    options: DemoOptions, model: Any = None, out_dir: str | Path | None = None
) -> dict[str, nn.Module]:
    """The demo's parameter-matched layers (``options.architectures``), trained from one shared
    forward on the bundled corpus, in eval mode; saved under ``out_dir/<architecture>`` if given.
    The examples' notebooks train their layers with this."""
    model = model if model is not None else zoo.load(options.model)
    layer = zoo.default_layer(options.model) if options.layer is None else options.layer
    configs = {
        name: layer_config(
            model, name, options, layer, None if out_dir is None else str(Path(out_dir) / name)
        )
        for name in options.architectures
    }
    return train_layers(model, configs)


def headline(evaluation: Evaluation, a: str, b: str) -> str:
    """One sentence: layer a's ΔCE against layer b's, with the paired standard error."""
    c = evaluation.compare(a, b)
    return (
        f"{a}'s ΔCE is {c['delta_ce_ratio']:.2f}× {b}'s: a difference of "
        f"{c['delta_ce_diff']:+.4f} ± {c['delta_ce_diff_se']:.4f} nats/token (paired SE over "
        f"{c['n_sequences']} held-out sequences, {abs(c['delta_ce_z']):.1f} SE)"
    )


def run_demo(options: DemoOptions) -> Evaluation:
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    out_dir = Path(options.out_dir)
    model = zoo.load(options.model)
    layer = zoo.default_layer(options.model) if options.layer is None else options.layer
    print(f"model {options.model}, layer {layer}: {options.training_tokens:,} tokens per layer")

    print(f"training {', '.join(options.architectures)} from one shared forward")
    train_matched(options, model, out_dir)

    # evaluate what was saved, loaded back through SAELens: the round trip is part of the demo
    loaded = {name: SAE.load_from_disk(out_dir / name) for name in options.architectures}
    print(f"\nloaded {len(loaded)} layers back with SAE.load_from_disk from {out_dir}/")
    heldout = token_sequences(
        model, zoo.load_corpus("heldout"), options.context_size, options.eval_sequences
    )
    print(f"evaluating on {heldout.numel():,} held-out tokens ({heldout.shape[0]} sequences)")
    if options.specialisation:
        print("then probing each layer's codes and measuring their usage on the bundled corpus")
    report = evaluate_and_report(
        model,
        loaded,
        heldout,
        out_dir,
        title=f"{options.model} layer {layer}",
        specialisation=options.specialisation,
    )
    evaluation = report.evaluation
    if "mxd" in loaded:
        print()
        for other in (name for name in loaded if name != "mxd"):
            print(headline(evaluation, "mxd", other))
    print(f"({time.perf_counter() - started:.0f} s in all)")
    return evaluation
