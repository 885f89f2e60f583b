"""Tests of the bundled offline zoo: corpus, tokenizer, tiny models, SAELens streaming."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerFast

from mxd_saelens import zoo

torch.set_num_threads(1)
BOS = 0


@pytest.fixture(scope="module")
def heldout():
    return zoo.load_corpus("heldout")


@pytest.fixture(scope="module", params=["tiny-gelu", "tiny-gated"])
def model(request) -> HookedTransformer:
    return zoo.load(request.param)


@pytest.fixture(scope="module")
def gelu() -> HookedTransformer:
    return zoo.load("tiny-gelu")


def heldout_batch(model: HookedTransformer, heldout, rows: int = 16) -> torch.Tensor:
    """BOS + 127 tokens from ``rows`` long-enough held-out documents spread over all labels."""
    texts = heldout["text"]
    step = max(1, len(texts) // (2 * rows))
    out = []
    for text in texts[::step]:
        toks = model.to_tokens(text[:4000], truncate=False)[0]
        if len(toks) >= 128:
            out.append(toks[:128])
        if len(out) == rows:
            break
    return torch.stack(out)


def test_list_models():
    assert zoo.list_models() == ["tiny-gelu", "tiny-gated"]
    assert zoo.default_layer("tiny-gelu") == 2


def test_load_returns_working_model(model: HookedTransformer):
    assert isinstance(model, HookedTransformer)
    assert isinstance(model.tokenizer, PreTrainedTokenizerFast)
    assert model.cfg.d_vocab == 4096 and model.cfg.n_layers == 4 and model.cfg.n_ctx == 128
    toks = model.to_tokens("The quick brown fox")
    assert toks[0, 0].item() == BOS and toks.shape[1] > 2
    assert model.to_tokens("x", prepend_bos=False)[0, 0].item() != BOS
    assert model.tokenizer.decode(toks[0, 1:]) == "The quick brown fox"
    _, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_mlp_out"))
    assert cache["blocks.2.hook_mlp_out"].shape == (1, toks.shape[1], model.cfg.d_model)
    out = model.generate("int main(", max_new_tokens=4, do_sample=False, verbose=False)
    assert isinstance(out, str) and out.startswith("int main(")


def test_heldout_loss_learned(model: HookedTransformer, heldout):
    loss = model(heldout_batch(model, heldout), return_type="loss").item()
    assert math.isfinite(loss)
    assert loss < math.log(4096) - 2.5, loss  # ln 4096 = 8.32 nats for a uniform guess
    info = zoo.model_info(model.cfg.model_name)
    assert info["heldout_loss"] < 5.0 and info["tokens"] > 0


def test_default_layer_mlp_matters(gelu: HookedTransformer, heldout):
    tokens = heldout_batch(gelu, heldout)
    layer = zoo.default_layer("tiny-gelu")
    clean = gelu(tokens, return_type="loss").item()

    def zero(act: torch.Tensor, hook) -> torch.Tensor:
        return torch.zeros_like(act)

    ablated = gelu.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", zero)]
    ).item()
    assert ablated - clean >= 0.1, (clean, ablated)
    assert zoo.model_info("tiny-gelu")["mlp_zero_ablation"][str(layer)]["delta"] >= 0.1


def test_corpus_splits_and_labels(heldout):
    train = zoo.load_corpus("train")
    cols = {"text", "natural_language", "programming_language", "source_kind", "source"}
    assert cols <= set(train.column_names) and cols <= set(heldout.column_names)
    assert len(train) > 1000 and len(heldout) > 50
    for col in ("natural_language", "programming_language", "source_kind"):
        assert set(train[col]) == set(heldout[col]), col
    assert {"en", "fr", "de", "none"} <= set(train["natural_language"])
    assert {"python", "c", "none"} <= set(train["programming_language"])
    assert not set(train["source"]) & set(heldout["source"])
    with pytest.raises(ValueError, match="train, heldout"):
        zoo.load_corpus("test")  # type: ignore[arg-type]


def test_unknown_model_name():
    with pytest.raises(ValueError, match="tiny-gelu, tiny-gated"):
        zoo.load("gpt2")
    with pytest.raises(ValueError, match="tiny-gelu"):
        zoo.model_info("nope")


def test_corrupt_or_missing_files(tmp_path: Path):
    root = tmp_path / "data"
    shutil.copytree(zoo.DATA_DIR / "tiny-gelu", root / "tiny-gelu")
    shutil.copy(zoo.DATA_DIR / "tokenizer.json", root / "tokenizer.json")
    weights = root / "tiny-gelu" / "model.safetensors"
    weights.write_bytes(b"\x00garbage" * 1000)
    with pytest.raises(zoo.ZooFileError, match=r"model\.safetensors.*corrupt.*train_zoo_model\.py"):
        zoo.load("tiny-gelu", data_root=root)
    weights.unlink()
    with pytest.raises(zoo.ZooFileError, match="missing"):
        zoo.load("tiny-gelu", data_root=root)
    with pytest.raises(zoo.ZooFileError, match="build_corpus"):
        zoo.load_corpus("train", data_root=root)


@pytest.mark.filterwarnings("ignore:.*fewer samples:UserWarning")
@pytest.mark.filterwarnings("ignore:Dataset is not tokenized:UserWarning")
def test_saelens_activations_store_streams(gelu: HookedTransformer, heldout):
    from sae_lens import LanguageModelSAERunnerConfig, StandardTrainingSAEConfig
    from sae_lens.training.activations_store import ActivationsStore

    hook = f"blocks.{zoo.default_layer('tiny-gelu')}.hook_mlp_out"
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=gelu.cfg.d_model, d_sae=256),
        model_name="tiny-gelu",
        hook_name=hook,
        dataset_path="",
        is_dataset_tokenized=False,
        streaming=False,
        context_size=32,
        store_batch_size_prompts=4,
        n_batches_in_buffer=2,
        train_batch_size_tokens=64,
        training_tokens=10_000,
        device="cpu",
    )
    store = ActivationsStore.from_config(gelu, cfg, override_dataset=heldout)
    tokens = store.get_batch_tokens()
    assert tokens.shape == (4, 32) and (tokens[:, 0] == BOS).all()
    batch = store.next_batch()
    assert batch.shape[-1] == gelu.cfg.d_model and batch.reshape(-1, 128).shape[0] == 64
    assert torch.isfinite(batch).all()


def test_a_bundled_model_loads_as_a_hooked_sae_transformer_with_a_layer_attached():
    import torch
    from sae_lens import HookedSAETransformer

    import mxd_saelens as mxd
    from mxd_saelens import zoo

    plain = zoo.load("tiny-gelu")
    model = zoo.load("tiny-gelu", cls=HookedSAETransformer)
    assert isinstance(model, HookedSAETransformer)
    tokens = plain.to_tokens("The cat sat on the mat.")
    torch.testing.assert_close(model(tokens), plain(tokens), rtol=0, atol=0)
    layer = mxd.TopKTranscoder(mxd.TopKTranscoderConfig(d_in=128, d_out=128, d_sae=256, k=4))
    layer.cfg.metadata.hook_name = "blocks.2.hook_mlp_out"  # SAELens's add_sae reads this hook
    _, cache = model.run_with_cache_with_saes(tokens, saes=[layer])
    assert "blocks.2.hook_mlp_out.hook_sae_acts_post" in cache


def test_sae_lens_own_runner_loads_a_bundled_model_by_name(tmp_path):
    from sae_lens import LanguageModelSAERunnerConfig, StandardTrainingSAEConfig
    from sae_lens.config import LoggingConfig
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    import mxd_saelens  # noqa: F401  (teaches SAELens's load_model the bundled names)
    from mxd_saelens import zoo

    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=128, d_sae=256),
        model_name="tiny-gelu",
        hook_name="blocks.1.hook_resid_post",
        dataset_path="unused",
        is_dataset_tokenized=False,
        context_size=64,
        training_tokens=1024,
        train_batch_size_tokens=512,
        store_batch_size_prompts=8,
        n_batches_in_buffer=16,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=str(tmp_path / "sae"),
        verbose=False,
    )
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=zoo.load_corpus("heldout"))
    assert runner.model.cfg.d_vocab == zoo.load("tiny-gelu").cfg.d_vocab
    runner.run()
    assert (tmp_path / "sae" / "cfg.json").is_file()


@pytest.mark.parametrize("name", ["tiny-gelu", "tiny-gated"])
def test_sae_lens_load_model_gives_each_bundled_model_as_the_class_asked_for(name: str):
    from sae_lens import HookedSAETransformer
    from sae_lens.load_model import load_model

    import mxd_saelens  # noqa: F401  (teaches SAELens's load_model the bundled names)

    plain = zoo.load(name)
    tokens = plain.to_tokens("The cat sat on the mat.")
    for class_name, cls in [
        ("HookedSAETransformer", HookedSAETransformer),
        ("HookedTransformer", HookedTransformer),
    ]:
        model = load_model(class_name, name, device="cpu")
        assert type(model) is cls
        torch.testing.assert_close(model(tokens), plain(tokens), rtol=0, atol=0)
    direct = zoo.load(name, cls=HookedSAETransformer)
    assert type(direct) is HookedSAETransformer
    torch.testing.assert_close(direct(tokens), plain(tokens), rtol=0, atol=0)
