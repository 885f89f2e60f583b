"""The model card published with a set of layers: what each layer is, what it was trained on,
how it splices, and how to load it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mxd_saelens.saes.traits import ARCHITECTURES, OWN_ARCHITECTURES, reads_mlp_shape

ARCHITECTURE_NAMES = {name: row.title for name, row in ARCHITECTURES.items()}


@dataclass
class PublishedLayer:
    """One saved layer on its way to the hub: where it is, its name there, and what the card
    says about it (its saved configs, and a splice evaluation row when one is given)."""

    folder: Path
    sae_id: str
    cfg: dict[str, Any]
    runner_cfg: dict[str, Any] | None
    parameters: int
    layer: Any = field(repr=False, default=None)
    evaluation: dict[str, Any] | None = None

    @property
    def architecture(self) -> str:
        return str(self.cfg["architecture"])

    @property
    def metadata(self) -> dict[str, Any]:
        return dict(self.cfg.get("metadata") or {})


def _number(value: Any, fmt: str) -> str:
    return "n/a" if value is None or value != value else format(value, fmt)


def _shape(item: PublishedLayer) -> str:
    cfg = item.cfg
    if reads_mlp_shape(item.architecture):
        glu = ", Swish-GLU" if cfg.get("glu") else ""
        return (
            f"{cfg['n_experts']:,} experts, k = {cfg['k']} active per token; hidden units "
            f"H = {cfg['d_hidden']:,} ({cfg['activation']}{glu}); d_in = {cfg['d_in']}, "
            f"d_out = {cfg.get('d_out') or cfg['d_in']}"
        )
    k = f", k = {cfg['k']} active per token" if "k" in cfg else ""
    return f"{cfg['d_sae']:,} latents{k}; d_in = {cfg['d_in']}, d_out = {cfg.get('d_out') or cfg['d_in']}"


def _width(item: PublishedLayer) -> str:
    cfg = item.cfg
    row = ARCHITECTURES.get(item.architecture)
    return f"{cfg[row.size_field if row else 'd_sae']:,}"


def _training_tokens(item: PublishedLayer) -> int | None:
    tokens = (item.runner_cfg or {}).get("training_tokens")
    return int(tokens) if isinstance(tokens, int | float) else None


def _evaluation_lines(item: PublishedLayer) -> list[str]:
    row = item.evaluation
    if row is None:
        return [
            "- Splice evaluation: none was given (`mxd-saelens eval`, then `mxd-saelens upload "
            "--eval_results results.json`, or `mxd-saelens upload --evaluate`)."
        ]
    text = f" of `{row['dataset_path']}`" if row.get("dataset_path") else ""
    size = ""
    if row.get("n_sequences"):
        size = f" on {row['n_sequences']:,} held-out sequences{text}"
        if row.get("n_tokens"):
            size += f" ({row['n_tokens']:,} tokens)"
    dead = row.get("dead_fraction")
    dead_text = "n/a" if dead is None or dead != dead else f"{100 * dead:.1f}%"
    return [
        f"- Splice evaluation (the layer replaces the MLP){size}: "
        f"ΔCE {_number(row.get('delta_ce'), '+.4f')} ± {_number(row.get('delta_ce_se'), '.4f')} "
        "nats/token (SE over sequences; lower is better), "
        f"CE recovered {_number(row.get('ce_recovered'), '.3f')}, "
        f"KL {_number(row.get('kl'), '.4f')} ± {_number(row.get('kl_se'), '.4f')}, "
        f"NMSE {_number(row.get('nmse'), '.4f')}, L0 {_number(row.get('l0'), '.1f')}, "
        f"dead fraction {dead_text} (codes that never fired on these tokens).",
    ]


def _layer_section(item: PublishedLayer) -> list[str]:
    meta = item.metadata
    lines = [
        f"## `{item.sae_id}`",
        "",
        f"- Architecture: {ARCHITECTURE_NAMES.get(item.architecture, item.architecture)}, "
        f"`{item.architecture}`: {_shape(item)}; {item.parameters:,} parameters.",
        f"- Model: `{meta.get('model_name', 'not recorded')}`. Reads "
        f"`{meta.get('hook_name', '?')}` (the MLP's input) and replaces "
        f"`{meta.get('hook_name_out', '?')}` (the MLP's output).",
    ]
    tokens = _training_tokens(item)
    dataset = meta.get("dataset_path")
    trained = f"{tokens:,} tokens" if tokens is not None else "tokens not recorded"
    if dataset:
        trained += f" of `{dataset}`"
    if meta.get("context_size"):
        trained += f", {meta['context_size']} tokens per sequence"
    lines.append(f"- Training: {trained}.")
    if meta.get("l0") is not None and meta.get("num_dead_features") is not None:
        lines.append(
            f"- At the end of training (as SAELens recorded it): L0 {meta['l0']:.1f}, "
            f"{meta['num_dead_features']:,} of {_width(item)} codes dead."
        )
    return [*lines, *_evaluation_lines(item), ""]


def _loading_section(repo_id: str, layers: Sequence[PublishedLayer]) -> list[str]:
    first = layers[0]
    own = any(item.architecture in OWN_ARCHITECTURES for item in layers)
    model_name = first.metadata.get("model_name")
    lines = ["## Loading", ""]
    if own:
        lines += [
            "These layers are mxd-saelens architectures: `import mxd_saelens` (the package "
            "`mxd-saelens`) registers them with SAELens, and must come "
            "before loading (SAELens has no plugin discovery; without it, loading fails with "
            f"`KeyError: '{first.architecture}'`).",
            "",
        ]
    lines += ["```python"]
    if own:
        lines.append(
            "import mxd_saelens  # registers the mxd, topk_transcoder and topk_skip_transcoder "
            "architectures"
        )
    lines += [
        "from sae_lens import SAE",
        "",
        f'layer = SAE.from_pretrained("{repo_id}", "{first.sae_id}")',
        "```",
        "",
        "To run the model with its MLP replaced by the layer (`splice` reads the layer's input "
        "hook and replaces the output hook its config names):",
        "",
        "```python",
        "from mxd_saelens.evaluation.splice import splice",
    ]
    if model_name in _bundled_models():
        lines += ["from mxd_saelens import zoo", "", f'model = zoo.load("{model_name}")']
    else:
        lines += [
            "from transformer_lens import HookedTransformer",
            "",
            f'model = HookedTransformer.from_pretrained("{model_name}")',
        ]
    lines += [
        "with splice(model, layer):",
        '    loss = model("Some text to score.", return_type="loss")',
        "```",
        "",
    ]
    return lines


def _bundled_models() -> list[str]:
    from mxd_saelens import zoo

    return zoo.list_models()


def model_card(repo_id: str, layers: Sequence[PublishedLayer]) -> str:
    """The ``README.md`` of the repository: a front matter the hub reads, a table of the
    layers, a section per layer and how to load one."""
    models = sorted({str(item.metadata.get("model_name", "?")) for item in layers})
    tags = ["sae-lens", "mxd-saelens", "transcoder"]
    if any(item.architecture == "mxd" for item in layers):
        tags.append("mixture-of-decoders")
    lines = ["---", "library_name: saelens", "tags:", *[f"- {t}" for t in tags], "---", ""]
    lines += [
        f"# {repo_id.split('/')[1]}",
        "",
        f"Sparse replacements of MLP layers of {', '.join(f'`{m}`' for m in models)}, trained "
        "with mxd-saelens through SAELens's training runner and saved in SAELens's format.",
        "",
        "| sae_id | architecture | replaces | width | params | training tokens | ΔCE ± SE | dead |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for item in layers:
        row, tokens = item.evaluation or {}, _training_tokens(item)
        dead = row.get("dead_fraction")
        lines.append(
            f"| `{item.sae_id}` | `{item.architecture}` | "
            f"`{item.metadata.get('hook_name_out', '?')}` | {_width(item)} | "
            f"{item.parameters:,} | {'n/a' if tokens is None else f'{tokens:,}'} | "
            + (
                f"{_number(row.get('delta_ce'), '+.4f')} ± {_number(row.get('delta_ce_se'), '.4f')}"
                if row
                else "n/a"
            )
            + f" | {'n/a' if dead is None or dead != dead else f'{100 * dead:.1f}%'} |"
        )
    lines.append("")
    lines += _loading_section(repo_id, layers)
    for item in layers:
        lines += _layer_section(item)
    return "\n".join(lines).rstrip() + "\n"
