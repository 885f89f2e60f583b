"""Token sequences for evaluation, cut from a dataset the way SAELens's store cuts them."""

from __future__ import annotations

from typing import Any

import torch
from sae_lens.training.activations_store import ActivationsStore
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.paired_store import store_notices_silenced
from mxd_saelens.data.sources import load_dataset_source


def token_sequences(
    model: HookedRootModule,
    dataset: Any,
    context_size: int,
    n_sequences: int | None = None,
    prepend_bos: bool = True,
) -> torch.Tensor:
    """``[n_sequences, context_size]`` tokens: documents tokenized, joined with BOS separators
    and cut into full-length sequences (each starting with BOS when ``prepend_bos``).
    ``n_sequences=None`` gives every full sequence the dataset holds (the tail shorter than
    ``context_size`` is dropped).

    ``dataset`` is a ``datasets.Dataset`` (``text`` or pretokenized ``tokens`` column), the
    bundled corpus (``"zoo:heldout"``), a local file, or a hub name.
    """
    if isinstance(dataset, str):
        dataset = load_dataset_source(dataset) or dataset
    batch = n_sequences or 1
    # the store only cuts text into sequences here: its training notices do not apply
    with store_notices_silenced():
        store = _sequence_store(model, dataset, context_size, batch, prepend_bos)
    if n_sequences is None:
        return _all_sequences(store, context_size)
    try:
        return store.get_batch_tokens(
            n_sequences, raise_at_epoch_end=True, move_to_model_device=False
        )
    except StopIteration:
        raise ValueError(
            f"the dataset holds fewer than {n_sequences} sequences of {context_size} tokens; "
            "ask for fewer sequences, a shorter context, or give more text."
        ) from None


def _sequence_store(
    model: Any, dataset: Any, context_size: int, batch: int, prepend_bos: bool
) -> ActivationsStore:
    return ActivationsStore(
        model=model,
        dataset=dataset,
        streaming=False,
        hook_name="hook_embed",
        hook_head_index=None,
        context_size=context_size,
        d_in=int(model.cfg.d_model),  # type: ignore[attr-defined]
        n_batches_in_buffer=1,
        total_training_tokens=batch * context_size,
        store_batch_size_prompts=batch,
        train_batch_size_tokens=context_size,
        prepend_bos=prepend_bos,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
    )


def _all_sequences(store: ActivationsStore, context_size: int) -> torch.Tensor:
    # the store drops the sequences of a batch cut short by the epoch's end: take one at a time
    sequences = []
    while True:
        try:
            sequences.append(
                store.get_batch_tokens(1, raise_at_epoch_end=True, move_to_model_device=False)
            )
        except StopIteration:
            break
    if not sequences:
        raise ValueError(
            f"the dataset holds no full sequence of {context_size} tokens; "
            "ask for a shorter context, or give more text."
        )
    return torch.cat(sequences)


def special_token_ids(model: HookedRootModule) -> list[int]:
    """BOS, EOS and padding ids of the model's tokenizer."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return []
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(i for i in ids if i is not None)


def keep_mask(model: HookedRootModule, tokens: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]``: True where the token is not a special one."""
    special = torch.tensor(special_token_ids(model), device=tokens.device, dtype=torch.long)
    return ~torch.isin(tokens, special)
