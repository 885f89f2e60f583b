"""Publishing layers for the hub: the files SAELens's upload sends, the model card, and loading
them back with ``SAE.from_pretrained`` from a Hugging Face cache laid out as the hub's.
Nothing here reaches the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from sae_lens.constants import (
    RUNNER_CFG_FILENAME,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
)
from safetensors.torch import load_file, save_file

from mxd_saelens.cli.main import main
from tests.helpers import as_hub_cache

REPO = "someone/tiny-layers"
UPLOADED = {SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME, RUNNER_CFG_FILENAME}


def _train(architecture: str, width: str, out: Path) -> Path:
    code = main(
        [
            "train", "--architecture", architecture, "--model_name", "tiny-gelu", "--layer", "1",
            width, "64", "--k", "4", "--training_tokens", "4096",
            "--train_batch_size_tokens", "1024", "--store_batch_size_prompts", "8",
            "--n_eval_batches", "1", "--log_to_wandb", "False", "--checkpoint_path",
            str(out.parent / f"{out.name}-ckpt"), "--output_path", str(out), "--verbose", "False",
        ]
    )  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained")
    layers = {
        "mxd": _train("mxd", "--n_experts", root / "mxd"),
        "topk_transcoder": _train("topk_transcoder", "--d_sae", root / "topk_transcoder"),
    }
    # a file of the folder that SAELens's upload leaves behind (not in its allow_patterns)
    (layers["mxd"] / "notes.txt").write_text("not for the hub")
    return layers


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _publish(trained: dict[str, Path], out: Path, *flags: str) -> Path:
    args = ["upload", str(trained["mxd"]), str(trained["topk_transcoder"]), "--repo_id", REPO]
    assert main([*args, "--sae_ids", "b1/mxd", "b1-topk", "--local_dir", str(out), *flags]) == 0
    return out


def test_the_local_folder_holds_what_the_hub_receives_and_a_card(trained, tmp_path, capsys):
    out = _publish(trained, tmp_path / "repo")
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    expected = {"README.md"} | {
        f"{sae_id}/{n}" for sae_id in ("b1/mxd", "b1-topk") for n in UPLOADED
    }
    assert files == expected
    for sae_id, name in (("b1/mxd", "mxd"), ("b1-topk", "topk_transcoder")):
        for file in UPLOADED:
            assert (out / sae_id / file).read_bytes() == (trained[name] / file).read_bytes()
    printed = capsys.readouterr().out
    assert "nothing was uploaded" in printed and str(out / "b1/mxd" / SAE_CFG_FILENAME) in printed

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: saelens\n")
    assert f'SAE.from_pretrained("{REPO}", "b1/mxd")' in card
    assert "import mxd_saelens" in card and "KeyError: 'mxd'" in card
    assert "Mixture of Decoders, `mxd`: 64 experts, k = 4" in card
    assert "TopK transcoder, `topk_transcoder`: 64 latents, k = 4" in card
    assert card.count("Reads `blocks.1.ln2.hook_normalized`") == 2
    assert card.count("replaces `blocks.1.hook_mlp_out`") == 2
    assert card.count("- Training: 4,096 tokens of `zoo`") == 2
    assert "Splice evaluation: none was given" in card
    assert 'model = zoo.load("tiny-gelu")' in card


def test_it_loads_back_through_a_hub_cache_with_from_pretrained(trained, tmp_path):
    out = _publish(trained, tmp_path / "repo")
    as_hub_cache(out, REPO, tmp_path / "hub")
    x = torch.randn(16, 128, generator=torch.Generator().manual_seed(0))
    save_file({"x": x}, tmp_path / "x.safetensors")
    script = textwrap.dedent(
        f"""
        import sys
        import torch
        import mxd_saelens
        from sae_lens import SAE
        from safetensors.torch import load_file, save_file

        x = load_file(sys.argv[1])["x"]
        out = {{}}
        for sae_id in ("b1/mxd", "b1-topk"):
            layer = SAE.from_pretrained("{REPO}", sae_id)
            with torch.no_grad():
                out[sae_id] = layer(x).contiguous()
                out[sae_id + ":codes"] = layer.encode(x).contiguous()
            out[sae_id + ":class"] = torch.tensor(list(type(layer).__name__.encode()))
        save_file(out, sys.argv[2])
        """
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    outputs = tmp_path / "outputs.safetensors"
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "x.safetensors"), str(outputs)],
        env=env,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    loaded = load_file(outputs)
    for sae_id, name, cls in (("b1/mxd", "mxd", "MxD"), ("b1-topk", "topk_transcoder", "TopKTranscoder")):  # fmt: skip
        original = SAE.load_from_disk(trained[name]).eval()
        with torch.no_grad():
            assert torch.equal(loaded[sae_id], original(x))
            assert torch.equal(loaded[sae_id + ":codes"], original.encode(x))
        assert bytes(loaded[sae_id + ":class"].tolist()).decode() == cls


def test_the_card_reports_an_evaluation_from_eval_json_or_evaluate(trained, tmp_path):
    text = ["--dataset_path", "zoo:heldout", "--n_sequences", "4", "--context_size", "32"]
    layers = [str(trained["mxd"]), str(trained["topk_transcoder"])]
    eval_dir = tmp_path / "eval"
    flags = [*text, "--out_dir", str(eval_dir), "--specialisation", "False"]
    assert main(["eval", *layers, *flags]) == 0
    rows = json.loads((eval_dir / "results.json").read_text())["rows"]
    from_json = _publish(trained, tmp_path / "a", "--eval_results", str(eval_dir / "results.json"))
    evaluated = _publish(trained, tmp_path / "b", "--evaluate", *text)
    card_a = (from_json / "README.md").read_text()
    card_b = (evaluated / "README.md").read_text()
    for row in rows:
        delta = f"ΔCE {row['delta_ce']:+.4f} ± {row['delta_ce_se']:.4f} nats/token"
        dead = f"dead fraction {100 * row['dead_fraction']:.1f}%"
        for card in (card_a, card_b):
            assert delta in card and dead in card
    assert "on 4 held-out sequences of `zoo:heldout`" in card_b
    assert "none was given" not in card_a + card_b


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("missing folder", "is not a folder holding a saved layer"),
        ("not a layer", "cfg.json is missing"),
        ("bad repo id", "--repo_id 'tiny-layers' is not a hub repository id"),
        ("same sae_id", "would both be sae_id 'mxd'"),
        ("sae_id count", "--sae_ids gives 1 names for 2 layers"),
        ("bad sae_id", "sae_id '../up' is not a folder name"),
        ("full local_dir", "is not an empty folder"),
        ("no row", "has no row for"),
        ("offline", "HF_HUB_OFFLINE is set"),
    ],
)
def test_mistakes_are_refused_before_anything_is_written(
    case, says, trained, tmp_path, capsys, monkeypatch
):
    mxd, tc = str(trained["mxd"]), str(trained["topk_transcoder"])
    out = tmp_path / "repo"
    local = ["--local_dir", str(out)]
    twin = tmp_path / "other" / "mxd"
    twin.mkdir(parents=True)
    (tmp_path / "not_a_layer").mkdir()
    (tmp_path / "not_a_layer" / "weights.bin").write_bytes(b"\0")
    (tmp_path / "results.json").write_text(json.dumps({"rows": [{"name": "elsewhere"}]}))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    args = {
        "missing folder": [str(tmp_path / "nowhere"), "--repo_id", REPO, *local],
        "not a layer": [str(tmp_path / "not_a_layer"), "--repo_id", REPO, *local],
        "bad repo id": [mxd, "--repo_id", "tiny-layers", *local],
        "same sae_id": [mxd, str(twin), "--repo_id", REPO, *local],
        "sae_id count": [mxd, tc, "--repo_id", REPO, "--sae_ids", "a", *local],
        "bad sae_id": [mxd, "--repo_id", REPO, "--sae_ids", "../up", *local],
        "full local_dir": [mxd, "--repo_id", REPO, "--local_dir", str(full)],
        "no row": [
            mxd,
            "--repo_id",
            REPO,
            "--eval_results",
            str(tmp_path / "results.json"),
            *local,
        ],
        "offline": [mxd, "--repo_id", REPO],
    }[case]
    from huggingface_hub import constants

    # what HF_HUB_OFFLINE=1 sets when huggingface_hub loads, whatever this shell has
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert main(["upload", *args]) == 2
    assert says in _one_error_line(capsys)
    assert not out.exists()
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
