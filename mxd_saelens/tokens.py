"""Token sequences for evaluation, cut from a dataset the way SAELens's store cuts them."""

from __future__ import annotations

from typing import Any

import torch
from sae_lens.training.activations_store import ActivationsStore
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.sources import load_dataset_source


def token_sequences(
    model: HookedRootModule,
    dataset: Any,
    context_size: int,
    n_sequences: int,
    prepend_bos: bool = True,
) -> torch.Tensor:
    """``[n_sequences, context_size]`` tokens: documents tokenized, joined with BOS separators
    and cut into full-length sequences (each starting with BOS when ``prepend_bos``).

    ``dataset`` is a ``datasets.Dataset`` (``text`` or pretokenized ``tokens`` column), the
    bundled corpus (``"zoo:heldout"``), a local file, or a hub name.
    """
    if isinstance(dataset, str):
        dataset = load_dataset_source(dataset) or dataset
    store = ActivationsStore(
        model=model,
        dataset=dataset,
        streaming=False,
        hook_name="hook_embed",
        hook_head_index=None,
        context_size=context_size,
        d_in=int(model.cfg.d_model),  # type: ignore[attr-defined]
        n_batches_in_buffer=1,
        total_training_tokens=n_sequences * context_size,
        store_batch_size_prompts=n_sequences,
        train_batch_size_tokens=context_size,
        prepend_bos=prepend_bos,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
    )
    try:
        return store.get_batch_tokens(
            n_sequences, raise_at_epoch_end=True, move_to_model_device=False
        )
    except StopIteration:
        raise ValueError(
            f"the dataset holds fewer than {n_sequences} sequences of {context_size} tokens; "
            "ask for fewer sequences, a shorter context, or give more text."
        ) from None
