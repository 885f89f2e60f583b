"""``mxd-saelens probe`` and ``mxd-saelens steer``: sparse probing and steering of saved layers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mxd_saelens.probing import HUB_SETS, PAPER_CONTEXT

CORPUS_LABELS = ("natural_language", "programming_language")


def _load_model(parser: argparse.ArgumentParser, name: str | None, layers: list[Any], device: str):
    from mxd_saelens.sources import load_language_model

    name = name or next((layer.cfg.metadata.model_name for layer in layers), None)
    if not name:
        parser.error("the layers do not record their model; pass --model")
    return load_language_model(name, device=device)


def _position(value: str | None) -> int | str | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def probe(args: Sequence[str]) -> None:
    from mxd_saelens.hooks import layer_of
    from mxd_saelens.layers import load_layer
    from mxd_saelens.probing import (
        LayerCodes,
        NeuronCodes,
        format_probe_table,
        labelled_set,
        sparse_probe,
    )

    parser = argparse.ArgumentParser(
        prog="mxd-saelens probe",
        description="Sparse probing: the best single code's F1 per class (one-vs-rest), "
        "for each saved layer and, with --base_mlp, the base MLP's neurons.",
    )
    parser.add_argument("layers", nargs="*", help="folders of saved layers")
    parser.add_argument(
        "--base_mlp", action="store_true", help="also probe the base MLP's neurons (reference)"
    )
    parser.add_argument(
        "--labels",
        default="natural_language",
        choices=[*CORPUS_LABELS, *HUB_SETS],
        help="a label of the bundled corpus, or one of the paper's hub sets (default: %(default)s)",
    )
    parser.add_argument(
        "--labels_source", help="a local file standing in for a hub set (the hub set's columns)"
    )
    parser.add_argument("--per_class", type=int, help="at most this many texts per class")
    parser.add_argument("--model", help="model name (default: the first layer's model_name)")
    parser.add_argument("--layer", type=int, help="block of --base_mlp when no layer is given")
    parser.add_argument(
        "--context_size",
        type=int,
        help=f"tokens pooled per text (default: {PAPER_CONTEXT}, or what fits the model)",
    )
    parser.add_argument(
        "--position", help="token-level probing at this position (an int, or a token string)"
    )
    parser.add_argument("--n_candidates", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="probe_results.json", help="JSON results file")
    opts = parser.parse_args(list(args))
    if not opts.layers and not opts.base_mlp:
        parser.error("give layer folders, --base_mlp, or both")

    layers = [load_layer(path, device=opts.device) for path in opts.layers]
    model = _load_model(parser, opts.model, layers, opts.device)
    sources: list[Any] = [
        LayerCodes(layer, name=path) for layer, path in zip(layers, opts.layers, strict=True)
    ]
    if opts.base_mlp:
        block = opts.layer
        if block is None and layers:
            block = layer_of(layers[0].cfg.metadata.hook_name)
        if block is None:
            parser.error("--base_mlp needs --layer when no layer folder is given")
        sources.append(NeuronCodes.of(model, block))

    kwargs: dict[str, Any] = {"seed": opts.seed}
    if opts.per_class:
        kwargs["per_class"] = opts.per_class
    data = labelled_set(opts.labels, source=opts.labels_source, **kwargs)
    results = [
        sparse_probe(
            model,
            source,
            data,
            position=_position(opts.position),
            context_size=opts.context_size,
            drop_short=True,
            n_candidates=opts.n_candidates,
            seed=opts.seed,
            batch_size=opts.batch_size,
        )
        for source in sources
    ]
    print(f"{data.name}: {results[0].n_samples} of {len(data)} texts long enough to probe")
    print(format_probe_table(results))
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([r.to_dict() for r in results], indent=2))
    print(f"wrote {out}")


def steer(args: Sequence[str]) -> None:
    from mxd_saelens.layers import load_layer
    from mxd_saelens.steering import PAPER_PROMPT, PAPER_STRENGTH, evaluate_steering, format_results
    from mxd_saelens.tokens import token_sequences

    parser = argparse.ArgumentParser(
        prog="mxd-saelens steer",
        description="Generate with one expert (or latent) of a saved layer raised by a constant at "
        "every position, and score the generations against the unsteered model.",
    )
    parser.add_argument("layer", help="folder of a saved layer")
    parser.add_argument("--expert", type=int, required=True, help="the expert or latent to steer")
    parser.add_argument(
        "--strength",
        type=float,
        nargs="+",
        default=[PAPER_STRENGTH],
        help="constant(s) added to the code; 0 is always run too (default: %(default)s)",
    )
    parser.add_argument("--prompt", default=PAPER_PROMPT)
    parser.add_argument("--n_samples", type=int, default=10)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_promoted", type=int, default=10, help="promoted tokens scored")
    parser.add_argument(
        "--reference",
        default="zoo:heldout",
        help="text whose mean hidden units give an MxD expert its direction (default: %(default)s)",
    )
    parser.add_argument("--n_reference", type=int, default=16, help="reference sequences")
    parser.add_argument("--model", help="model name (default: the layer's model_name)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the results to this JSON file")
    opts = parser.parse_args(list(args))

    layer = load_layer(opts.layer, device=opts.device)
    model = _load_model(parser, opts.model, [layer], opts.device)
    context = min(PAPER_CONTEXT, int(model.cfg.n_ctx))
    reference = token_sequences(model, opts.reference, context, opts.n_reference)
    strengths = sorted({0.0, *opts.strength})
    results = evaluate_steering(
        model,
        layer,
        opts.expert,
        strengths,
        prompt=opts.prompt,
        n_samples=opts.n_samples,
        max_new_tokens=opts.max_new_tokens,
        reference_tokens=reference.to(opts.device),
        n_promoted=opts.n_promoted,
        seed=opts.seed,
        temperature=opts.temperature,
    )
    first = results[0]
    print(f"code {opts.expert}: typical value when it fires {first.code_scale:.3f}")
    print(f"promoted tokens: {first.promoted}")
    for r in results:
        print(f"\n--- strength {r.strength:g}")
        for text in r.generations:
            print(f"{opts.prompt}{text}".replace("\n", "\\n"))
    print()
    print(format_results(results))
    if opts.out:
        out = Path(opts.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([r.to_dict() for r in results], indent=2))
        print(f"wrote {out}")
