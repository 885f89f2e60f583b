"""Fixtures: a small TransformerLens model built from a config, with a tokenizer trained in
memory, and in-memory datasets. Nothing is downloaded."""

from __future__ import annotations

import os
import random
import tempfile

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# one directory for the whole session: wandb reads WANDB_DIR once per process, so a test
# finds its own run with tests.helpers.wandb_run_file_since
os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="mxd-saelens-wandb-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "bird",
    "sees",
    "chases",
    "likes",
    "eats",
    "runs",
    "sleeps",
    "under",
    "over",
    "near",
    "big",
    "small",
    "red",
    "green",
    "quick",
    "slow",
    "house",
    "tree",
    "river",
    "and",
    "then",
    "because",
    "while",
    "it",
    "they",
    "we",
    "you",
]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        sentences = []
        for _ in range(rng.randint(3, 8)):
            sentences.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) + " .")
        texts.append(" ".join(sentences))
    return texts


def make_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<|endoftext|>", "<unk>"])
    tokenizer.train_from_iterator(synthetic_texts(50), trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        add_bos_token=True,
    )
    # TransformerLens reads this key; with add_bos_token set it never loads anything by it
    wrapped.init_kwargs["name_or_path"] = "in-memory"
    return wrapped


def make_model(gated: bool = False, seed: int = 0) -> HookedTransformer:
    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=128,
        n_ctx=64,
        d_vocab=tokenizer.vocab_size,
        act_fn="silu" if gated else "gelu_new",
        gated_mlp=gated,
        normalization_type="RMS" if gated else "LN",
        positional_embedding_type="rotary" if gated else "standard",
        seed=seed,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_model() -> HookedTransformer:
    return make_model()


@pytest.fixture(scope="session")
def tiny_gated_model() -> HookedTransformer:
    return make_model(gated=True)


@pytest.fixture(scope="session")
def text_dataset() -> Dataset:
    return Dataset.from_dict({"text": synthetic_texts(400, seed=1)})


@pytest.fixture(scope="session")
def heldout_tokens(tiny_model: HookedTransformer) -> torch.Tensor:
    texts = " ".join(synthetic_texts(40, seed=2))
    tokens = tiny_model.to_tokens(texts, prepend_bos=False)[0]
    n = tokens.shape[0] // 31 * 31
    body = tokens[:n].reshape(-1, 31)[:24]
    bos = torch.full((body.shape[0], 1), tiny_model.tokenizer.bos_token_id)
    return torch.cat([bos, body], dim=1)
