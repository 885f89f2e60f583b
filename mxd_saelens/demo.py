"""The whole product on the bundled default, in minutes on a CPU.

Trains an MxD and the parameter-matched TopK transcoder and TopK skip transcoder on one MLP of
a bundled model, splices each into the model on held-out text, prints a table, writes JSON and
an HTML frontier report, saves every layer in SAELens's format and loads one back with
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
from mxd_saelens.config import runner_config
from mxd_saelens.evaluation import evaluate_layers
from mxd_saelens.hooks import mlp_shape, resolve_mlp_hooks
from mxd_saelens.params import matched_n_experts
from mxd_saelens.report import format_table, write_report
from mxd_saelens.runner import PairedTrainingRunner
from mxd_saelens.tokens import token_sequences


@dataclass
class DemoOptions:
    model: str = "tiny-gelu"
    """A bundled model (see mxd_saelens.zoo.list_models())."""
    layer: int | None = None
    """The MLP to replace; default: the model's default layer."""
    training_tokens: int = 2_000_000
    """Tokens per layer (at 500k the MxD still trails the transcoders; by 2M it leads)."""
    k: int = 32
    """Active experts (MxD) or latents (transcoders) per token."""
    expansion: int = 32
    """Transcoder width as a multiple of d_model; the MxD is matched to it."""
    batch_tokens: int = 2048
    lr: float = 3e-3
    """Adam learning rate; the paper's 1e-4 is for 480M tokens, short runs need more (3e-3
    beat 1e-3 and 1e-2 for both the MxD and the TopK transcoder at 500k tokens)."""
    context_size: int = 128
    eval_sequences: int = 48
    architectures: tuple[str, ...] = ("mxd", "topk_transcoder", "topk_skip_transcoder")
    out_dir: str = "demo_output"
    seed: int = 42


def matched_layer_fields(model: Any, architecture: str, k: int, expansion: int) -> dict[str, Any]:
    """Layer config fields at the parameter count of a TopK transcoder with d_sae = expansion·d."""
    d = int(model.cfg.d_model)
    d_sae = expansion * d
    if architecture == "mxd":
        shape = mlp_shape(model)
        n_experts = matched_n_experts(d, d, shape["d_hidden"], d_sae)
        if shape["glu"]:
            # the GLU's second encoder (E_glu, b_glu) is paid for with experts
            n_experts -= round((d * shape["d_hidden"] + shape["d_hidden"]) / (2 * d + 1))
        return {"n_experts": n_experts, "k": k, **shape}
    if architecture == "topk_skip_transcoder":
        # the skip matrix costs d·d parameters: give them back from the dictionary
        return {"d_sae": d_sae - round(d * d / (2 * d + 1)), "k": k}
    return {"d_sae": d_sae, "k": k}


def train_layer(
    model: Any, architecture: str, options: DemoOptions, layer: int, out_dir: Path
) -> nn.Module:
    hooks = resolve_mlp_hooks(model, layer=layer)
    cfg = runner_config(
        architecture,
        model_name=options.model,
        hook_name=hooks.hook_in,
        hook_name_out=hooks.hook_out,
        d_in=hooks.d_in,
        d_out=hooks.d_out,
        context_size=options.context_size,
        training_tokens=options.training_tokens,
        train_batch_size_tokens=options.batch_tokens,
        store_batch_size_prompts=max(1, options.batch_tokens // options.context_size),
        n_batches_in_buffer=8,
        lr=options.lr,
        lr_warm_up_steps=max(1, options.training_tokens // options.batch_tokens // 20),
        seed=options.seed,
        log_to_wandb=False,
        checkpoint_path=None,
        output_path=str(out_dir / architecture),
        exclude_special_tokens=True,
        model_from_pretrained_kwargs={},  # a bundled model: no loading options to record
        verbose=False,
        **matched_layer_fields(model, architecture, options.k, options.expansion),
    )
    runner = PairedTrainingRunner(
        cfg, override_model=model, override_dataset=zoo.load_corpus("train")
    )
    return runner.run().eval()


def run_demo(options: DemoOptions) -> list[dict[str, Any]]:
    started = time.perf_counter()
    torch.manual_seed(options.seed)
    out_dir = Path(options.out_dir)
    model = zoo.load(options.model)
    layer = zoo.default_layer(options.model) if options.layer is None else options.layer
    print(f"model {options.model}, layer {layer}: {options.training_tokens:,} tokens per layer")

    for architecture in options.architectures:
        print(f"\n== training {architecture}")
        train_layer(model, architecture, options, layer, out_dir)

    # evaluate what was saved, loaded back through SAELens: the round trip is part of the demo
    loaded = {name: SAE.load_from_disk(out_dir / name) for name in options.architectures}
    print(f"\nloaded {len(loaded)} layers back with SAE.load_from_disk from {out_dir}/")
    heldout = token_sequences(
        model, zoo.load_corpus("heldout"), options.context_size, options.eval_sequences
    )
    rows = evaluate_layers(model, loaded, heldout)
    print()
    print(format_table(rows))
    json_path, html_path = write_report(rows, out_dir, title=f"{options.model} layer {layer}")
    print(f"\nwrote {json_path} and {html_path} ({time.perf_counter() - started:.0f} s in all)")
    return rows
