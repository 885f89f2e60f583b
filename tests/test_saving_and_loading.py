"""Round trips through SAELens's own saving and loading code, and the registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.transcoder import SkipTranscoder, Transcoder

import mxd_saelens as mxd
from tests.helpers import randomize_

I, O = 12, 10

TRAINING_LAYERS = {
    "mxd": lambda: mxd.MxDTrainingSAE(
        mxd.MxDTrainingSAEConfig(
            d_in=I, d_out=O, d_hidden=24, n_experts=40, k=4, glu=True, activation="silu"
        )
    ),
    "topk_transcoder": lambda: mxd.TopKTranscoderTrainingSAE(
        mxd.TopKTranscoderTrainingSAEConfig(d_in=I, d_out=O, d_sae=48, k=4)
    ),
    "topk_skip_transcoder": lambda: mxd.TopKSkipTranscoderTrainingSAE(
        mxd.TopKSkipTranscoderTrainingSAEConfig(d_in=I, d_out=O, d_sae=48, k=4)
    ),
    "transcoder": lambda: mxd.TranscoderTrainingSAE(
        mxd.TranscoderTrainingSAEConfig(d_in=I, d_out=O, d_sae=48)
    ),
    "skip_transcoder": lambda: mxd.SkipTranscoderTrainingSAE(
        mxd.SkipTranscoderTrainingSAEConfig(d_in=I, d_out=O, d_sae=48)
    ),
}
INFERENCE_CLASS = {
    "mxd": mxd.MxD,
    "topk_transcoder": mxd.TopKTranscoder,
    "topk_skip_transcoder": mxd.TopKSkipTranscoder,
    "transcoder": Transcoder,
    "skip_transcoder": SkipTranscoder,
}


def saved_layer(architecture: str, path: Path):
    layer = randomize_(TRAINING_LAYERS[architecture]()).eval()
    layer.cfg.metadata.hook_name = "blocks.1.ln2.hook_normalized"
    layer.cfg.metadata.hook_name_out = "blocks.1.hook_mlp_out"
    layer.save_inference_model(path)
    return layer


@pytest.mark.parametrize("architecture", list(TRAINING_LAYERS))
def test_saved_training_layer_loads_with_sae_load_from_disk(architecture: str, tmp_path: Path):
    layer = saved_layer(architecture, tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert type(loaded) is INFERENCE_CLASS[architecture]
    assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == architecture
    assert loaded.cfg.metadata.hook_name_out == "blocks.1.hook_mlp_out"
    x = torch.randn(9, I)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), layer(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.encode(x), layer.encode(x), rtol=0, atol=0)


def test_stock_transcoders_load_without_this_package(tmp_path: Path) -> None:
    """The ReLU transcoders' saved folders load in a Python process that never imports us."""
    for architecture in ("transcoder", "skip_transcoder"):
        layer = saved_layer(architecture, tmp_path / architecture)
        x = torch.randn(5, I)
        torch.save(x, tmp_path / "x.pt")
        with torch.no_grad():
            expected = layer(x)
        script = textwrap.dedent(
            f"""
            import sys, torch
            from sae_lens import SAE
            sae = SAE.load_from_disk({str(tmp_path / architecture)!r})
            assert "mxd_saelens" not in sys.modules
            x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
            print(type(sae).__name__)
            torch.save(sae(x).detach(), {str(tmp_path / "out.pt")!r})
            """
        )
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == INFERENCE_CLASS[architecture].__name__
        torch.testing.assert_close(torch.load(tmp_path / "out.pt", weights_only=True), expected)


def test_an_mxd_folder_in_a_process_without_this_package_fails_as_the_readme_says(
    tmp_path: Path,
) -> None:
    """SAELens has no plugin discovery: a fresh process that never imports mxd_saelens gets
    SAELens's bare ``KeyError: 'mxd'`` (the README names it and the fix), and the same process
    loads the folder once it imports the package."""
    saved_layer("mxd", tmp_path / "layer")
    script = textwrap.dedent(
        f"""
        import sys
        from sae_lens import SAE
        try:
            SAE.load_from_disk({str(tmp_path / "layer")!r})
        except KeyError as error:
            print("KeyError:", error)
        assert "mxd_saelens" not in sys.modules
        import mxd_saelens
        print(type(SAE.load_from_disk({str(tmp_path / "layer")!r})).__name__)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == ["KeyError: 'mxd'", "MxD"], done.stdout
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "without it SAELens fails with `KeyError: 'mxd'`" in readme


def test_from_pretrained_reads_a_local_hugging_face_cache_offline(tmp_path: Path) -> None:
    """SAE.from_pretrained("org/repo", "some_folder") through SAELens's and huggingface_hub's
    real code, from a cache laid out on disk, with HF_HUB_OFFLINE=1."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--repo"
    folder = repo / "snapshots" / commit / "some_folder"
    layer = saved_layer("mxd", folder)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    x = torch.randn(4, I)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(layer(x), tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch, mxd_saelens
        from sae_lens import SAE
        sae = SAE.from_pretrained("org/repo", "some_folder")
        x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r}, weights_only=True)
        assert type(sae).__name__ == "MxD", type(sae)
        torch.testing.assert_close(sae(x), expected, rtol=0, atol=0)
        print("ok")
        """
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
    }
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_weights_that_do_not_match_the_config_are_named(tmp_path: Path) -> None:
    saved_layer("mxd", tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["d_hidden"] = 30
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ValueError, match=r"'W_enc' has shape \(12, 24\), the config implies \(12, 30\)"
    ):
        SAE.load_from_disk(tmp_path)


def test_registration_is_idempotent_and_respects_existing_names() -> None:
    for _ in range(2):
        mxd.register_architectures()
    assert SAE_CLASS_REGISTRY["mxd"] == (mxd.MxD, mxd.MxDConfig)
    assert SAE_TRAINING_CLASS_REGISTRY["mxd"] == (mxd.MxDTrainingSAE, mxd.MxDTrainingSAEConfig)
    assert SAE_CLASS_REGISTRY["transcoder"][0] is Transcoder  # SAELens's own stays in place
    assert SAE_TRAINING_CLASS_REGISTRY["transcoder"][0] is mxd.TranscoderTrainingSAE

    # a name that someone else registered first is left alone, with a warning, not an error
    saved = SAE_CLASS_REGISTRY["topk_transcoder"]
    SAE_CLASS_REGISTRY["topk_transcoder"] = (Transcoder, saved[1])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            mxd.register_architectures()
        assert SAE_CLASS_REGISTRY["topk_transcoder"][0] is Transcoder
        assert any("already has a 'topk_transcoder'" in str(w.message) for w in caught)
    finally:
        SAE_CLASS_REGISTRY["topk_transcoder"] = saved

    # importing the package in a fresh interpreter twice over (reload) raises nothing
    script = "import importlib, mxd_saelens, mxd_saelens.saes.registration as r; importlib.reload(r); r.register_architectures(); print('ok')"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("architecture", list(TRAINING_LAYERS))
def test_folding_the_activation_scale_maps_raw_activations_to_raw_activations(architecture):
    """Trained on (s·x, s·y), folded, the layer computes f(s·x)/s from raw x."""
    layer = randomize_(TRAINING_LAYERS[architecture](), seed=3, scale=0.3).eval()
    x = torch.randn(16, I)
    scale = 2.7
    with torch.no_grad():
        expected = layer(x * scale) / scale
        layer.fold_activation_norm_scaling_factor(scale)
        torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)
    assert layer.cfg.normalize_activations == "none"
