"""``mxd-saelens probe``, ``steer`` and ``dashboard``: sparse probing, steering and feature
pages of saved layers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simple_parsing import field
from simple_parsing.helpers import choice

from mxd_saelens.cli.parsing import UserError, parse_options
from mxd_saelens.reading.probing import HUB_SETS, PAPER_CONTEXT
from mxd_saelens.reading.steering import PAPER_PROMPT, PAPER_STRENGTH

CORPUS_LABELS = ("natural_language", "programming_language")


def _load_model(name: str | None, layers: list[Any], device: str) -> Any:
    """The layers' model, loaded as they were trained on it (name, class, loading options)."""
    from mxd_saelens.data.sources import load_model_of_layers

    name = name or next((layer.cfg.metadata.model_name for layer in layers), None)
    if not name:
        raise UserError("the layers do not record their model; pass --model")
    return load_model_of_layers(layers, name, device=device)


def _position(value: str | None) -> int | str | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


@dataclass
class ProbeOptions:
    """What to probe, on which labelled texts."""

    layers: list[str] = field(positional=True, nargs="*", default_factory=list, metavar="LAYER")  # noqa: RUF009
    """Folders of saved layers."""
    base_mlp: bool = False
    """Also probe the base MLP's neurons (the reference)."""
    labels: str = choice(*CORPUS_LABELS, *HUB_SETS, default="natural_language")
    """A label of the bundled corpus, or one of the paper's hub sets."""
    labels_source: str | None = None
    """A local file standing in for a hub set (the hub set's columns)."""
    per_class: int | None = None
    """At most this many texts per class (default: the set's own number)."""
    model: str | None = None
    """Model name (default: the first layer's model_name)."""
    layer: int | None = None
    """The block of --base_mlp when no layer folder is given."""
    context_size: int | None = None
    """Tokens pooled per text (default: the paper's, or what fits the model)."""
    position: str | None = None
    """Token-level probing at this position (an int, or a token string)."""
    n_candidates: int = 100
    """Codes shortlisted by their class-mean difference before the F1 search."""
    seed: int = 42
    """Seed of the sampling and the train/test split."""
    batch_size: int = 16
    """Texts per forward."""
    device: str = "cpu"
    """Device for the model and the layers."""
    out: str = "probe_results.json"
    """JSON results file."""


PROBE_DESCRIPTION = (
    "Sparse probing: the best single code's F1 per class (one-vs-rest), for each saved layer "
    "and, with --base_mlp, the base MLP's neurons."
)


@dataclass
class SteerOptions:
    """Which code to steer, how hard, and how the generations are scored."""

    layer: str = field(positional=True, metavar="LAYER")
    """Folder of a saved layer."""
    expert: int = field(required=True)
    """The expert (MxD) or latent (transcoder) to steer."""
    strength: list[float] = field(  # noqa: RUF009
        default_factory=lambda: [PAPER_STRENGTH], nargs="+", required=False
    )
    """Constant(s) added to the code at every position; 0 is always run too."""
    prompt: str = PAPER_PROMPT
    """The text generation continues."""
    n_samples: int = 10
    """Generations per strength."""
    max_new_tokens: int = 32
    """Tokens generated per sample."""
    temperature: float = 1.0
    """Sampling temperature."""
    seed: int = 0
    """Seed of the sampling."""
    n_promoted: int = 10
    """Promoted tokens scored."""
    reference: str = "zoo:heldout"
    """Text whose mean hidden units give an MxD expert its direction."""
    n_reference: int = 16
    """Reference sequences."""
    model: str | None = None
    """Model name (default: the layer's model_name)."""
    device: str = "cpu"
    """Device for the model and the layer."""
    out: str | None = None
    """Also write the results to this JSON file."""


STEER_DESCRIPTION = (
    "Generate with one expert (or latent) of a saved layer raised by a constant at every "
    "position, and score the generations against the unsteered model."
)


def probe(args: Sequence[str]) -> None:
    from mxd_saelens.reading.probing import (
        LayerCodes,
        NeuronCodes,
        format_probe_table,
        labelled_set,
        sparse_probe,
    )
    from mxd_saelens.saes.loading import load_layer

    opts = parse_options(ProbeOptions, args, "mxd-saelens probe", PROBE_DESCRIPTION)
    if not opts.layers and not opts.base_mlp:
        raise UserError("give layer folders, --base_mlp, or both")

    layers = [load_layer(path, device=opts.device) for path in opts.layers]
    model = _load_model(opts.model, layers, opts.device)
    sources: list[Any] = [
        LayerCodes(layer, name=path) for layer, path in zip(layers, opts.layers, strict=True)
    ]
    if opts.base_mlp:
        sources.append(NeuronCodes.of(model, _base_mlp_block(opts.layer, layers)))

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


def _base_mlp_block(layer: int | None, layers: Sequence[Any]) -> int:
    """The block whose MLP neurons --base_mlp probes: --layer, else the first layer's block."""
    from mxd_saelens.data.hooks import layer_of

    block = layer
    if block is None and layers:
        block = layer_of(layers[0].cfg.metadata.hook_name)
    if block is None:
        raise UserError("--base_mlp needs --layer when no layer folder is given")
    return block


def steer(args: Sequence[str]) -> None:
    from mxd_saelens.data.tokens import token_sequences
    from mxd_saelens.reading.steering import evaluate_steering, format_results
    from mxd_saelens.saes.loading import load_layer

    opts = parse_options(SteerOptions, args, "mxd-saelens steer", STEER_DESCRIPTION)
    layer = load_layer(opts.layer, device=opts.device)
    model = _load_model(opts.model, [layer], opts.device)
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


@dataclass
class DashboardOptions:
    """Which features of which layer, shown on which text."""

    layer: str = field(positional=True, metavar="LAYER")
    """Folder of a saved layer."""
    features: list[int] = field(required=True, nargs="+")  # noqa: RUF009
    """Indices of the experts (MxD) or latents (transcoder) to show."""
    dataset_path: str = "zoo:heldout"
    """Text the features are read on: the bundled held-out split, a local file, or a hub set
    (--dataset, its old name, still works)."""
    n_sequences: int = 256
    """Sequences of that text."""
    context_size: int = 128
    """Tokens per sequence."""
    n_examples: int = 8
    """Top-activating contexts per feature."""
    model: str | None = None
    """Model name (default: the layer's model_name)."""
    device: str = "cpu"
    """Device for the model and the layer."""
    out: str = "dashboard.html"
    """The HTML page written."""


DASHBOARD_DESCRIPTION = "One offline HTML page per chosen expert (MxD) or latent (transcoder)."


def dashboard(args: Sequence[str]) -> None:
    from mxd_saelens.data.tokens import token_sequences
    from mxd_saelens.reading.dashboard import check_features, write_dashboard
    from mxd_saelens.saes.loading import load_layer

    opts = parse_options(DashboardOptions, args, "mxd-saelens dashboard", DASHBOARD_DESCRIPTION)
    layer = load_layer(opts.layer, device=opts.device)
    features = check_features(layer, opts.features)  # before the model loads
    model = _load_model(opts.model, [layer], opts.device)
    model_name = opts.model or layer.cfg.metadata.model_name
    tokens = token_sequences(model, opts.dataset_path, opts.context_size, opts.n_sequences)
    title = f"{layer.cfg.architecture()} {Path(opts.layer).name} on {model_name}"
    path = write_dashboard(layer, model, features, tokens, opts.out, title, opts.n_examples)
    print(f"wrote {path}")
