"""Paired (MLP input, MLP output) activations on SAELens's ``ActivationsStore``.

One model forward per batch, stopped after block L, captures both hooks; each token becomes a
packed row ``[x ‖ y]`` so that shuffling can never separate an input from its target. Several
hook pairs (layers in different blocks, or different hooks) ride the same forward: the row is
then ``[x₁ ‖ y₁ ‖ x₂ ‖ y₂ …]``, one segment per pair, stopped after the last block. All of
SAELens's store options (context size, prompts per batch, BOS handling, special-token
exclusion, sequence slicing, dtypes, devices, raw or pretokenized datasets) apply unchanged.

The shuffle buffer is this module's own so that its contents and random state go into
checkpoints: a resumed run sees exactly the batches the uninterrupted run would have seen. It
pools at least ``MIN_SHUFFLE_TOKENS`` tokens (about 60 documents of the bundled corpus; all the
training tokens when a run is shorter) before serving, whatever ``n_batches_in_buffer`` says:
a layer trained on batches drawn from a few documents at a time sees correlated, slowly
drifting data and learns markedly worse (an MxD's ΔCE doubled with a 16k-token buffer:
benchmarks/results/mixing.json).

Overlap (SAELens's ``prefetch_llm_batches``): a background thread runs the buffer's refills, one
model forward per store batch, ahead of the training step (:class:`BackgroundRefill`). The
buffer takes the refills in the order the synchronous store makes them, so the batches are the
same; a checkpoint records the stream position after the last refill the buffer *took*, so
store batches still queued are recomputed on resumption and resumption stays exact.

Data-parallel streaming (under torchrun): every rank reads the whole token stream, runs the
model on its own ``1/N`` of the sequences of each store batch, and the ranks all-gather the
activations, so every rank holds the one-process buffer and serves its ``1/N`` of each training
batch. The N ranks together take exactly the steps of one process at the same batch size, and
resume exactly, at the price of sending the activations between ranks and holding the whole
buffer on each.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import LanguageModelSAERunnerConfig
from sae_lens.training.activations_store import ActivationsStore
from safetensors.torch import load_file, save_file
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens.data.buffers import BackgroundRefill, Position, ShuffleBuffer, prefetch_depth
from mxd_saelens.data.hooks import MLPHooks
from mxd_saelens.distributed import Distributed, check_shardable
from mxd_saelens.sae_lens_internals import input_token_device

PAIRED_STATE_FILENAME = "paired_activations_state.safetensors"
MIN_SHUFFLE_TOKENS = 2**17

# SAELens's advice that does not apply to the bundled corpus: it is a few MB of raw text,
# tokenized as it streams, and read for several epochs by design
_BUNDLED_CORPUS_NOTICES = (
    "Dataset is not tokenized",
    "The training dataset contains fewer samples",
)


def is_bundled_corpus(dataset_path: str) -> bool:
    return dataset_path == "zoo" or dataset_path.startswith("zoo:")


@contextmanager
def store_notices_silenced(silence: bool = True) -> Iterator[None]:
    """Build SAELens stores without those notices (when ``silence``): for the bundled corpus,
    or a store that only cuts text into sequences. A user's own training data keeps them."""
    with warnings.catch_warnings():
        if silence:
            for notice in _BUNDLED_CORPUS_NOTICES:
                warnings.filterwarnings("ignore", message=notice, category=UserWarning)
        yield


# the stream position after a refill: (sequences served, dataset rows read)


def pair_columns(pairs: Sequence[MLPHooks]) -> list[slice]:
    """The columns of each pair's ``[x ‖ y]`` segment in a packed row."""
    slices, start = [], 0
    for pair in pairs:
        slices.append(slice(start, start + pair.d_in + pair.d_out))
        start += pair.d_in + pair.d_out
    return slices


class PairedActivationsStore(ActivationsStore):
    """An ``ActivationsStore`` whose rows are ``[mlp_in ‖ mlp_out]`` of the same token (one
    segment per hook pair when several are trained from one forward)."""

    hooks: MLPHooks
    pairs: list[MLPHooks]
    min_shuffle_tokens: int = MIN_SHUFFLE_TOKENS
    n_sequences_served: int
    shuffle_seed: int
    token_hash: Any = None  # a hashlib object fed every token sequence served, when set
    prefetch: bool | int = False  # SAELens's prefetch_llm_batches (see prefetch_depth)
    distributed: Distributed = Distributed()
    data_group: Any = None  # the process group the activations are all-gathered on
    _buffer: ShuffleBuffer | None
    _refill: BackgroundRefill | None = None

    @classmethod
    def from_runner_config(
        cls,
        model: HookedRootModule,
        cfg: LanguageModelSAERunnerConfig[Any],
        hooks: MLPHooks | Sequence[MLPHooks],
        override_dataset: Any = None,
        distributed: Distributed | None = None,
    ) -> PairedActivationsStore:
        """``distributed``: this process's rank in a data-parallel run, which then runs the
        model on its share of every store batch (see the module's docstring)."""
        if cfg.use_cached_activations:
            raise ValueError(
                "PairedActivationsStore runs the model; a paired cache is read by "
                "mxd_saelens.data.cache_reader.CachedPairedActivations, which the runners use when "
                "cached_activations_path is set."
            )
        pairs = [hooks] if isinstance(hooks, MLPHooks) else list(hooks)
        if not pairs:
            raise ValueError("give at least one pair of MLP hooks.")
        with store_notices_silenced(is_bundled_corpus(cfg.dataset_path)):
            store = cls.from_config(model, cfg, override_dataset=override_dataset)
        assert isinstance(store, PairedActivationsStore)
        store._attach_pairs(pairs, cfg.seed)
        store.prefetch = getattr(cfg, "prefetch_llm_batches", False)
        if distributed is not None and distributed.enabled:
            check_shardable(cfg.store_batch_size_prompts, distributed.world_size)
            store.distributed = distributed
            store.data_group = distributed.new_group()
        return store

    @classmethod
    def for_caching(
        cls,
        model: HookedRootModule,
        pairs: Sequence[MLPHooks],
        dataset: Any,
        n_tokens: int,
        context_size: int,
        store_batch_size_prompts: int,
        prepend_bos: bool,
        exclude_special_tokens: torch.Tensor | None,
        disable_concat_sequences: bool,
        streaming: bool,
        autocast_lm: bool,
        quiet: bool,
    ) -> PairedActivationsStore:
        """A store that only captures (no training batches, no shuffling): what
        :mod:`mxd_saelens.data.cache_writer` writes to disk, in float32 on the CPU."""
        with store_notices_silenced(quiet):
            store = cls(
                model=model,
                dataset=dataset,
                streaming=streaming,
                hook_name=pairs[0].hook_in,
                hook_head_index=None,
                context_size=context_size,
                d_in=pairs[0].d_in,
                n_batches_in_buffer=1,
                total_training_tokens=n_tokens,
                store_batch_size_prompts=store_batch_size_prompts,
                train_batch_size_tokens=-1,
                prepend_bos=prepend_bos,
                normalize_activations="none",
                device=torch.device("cpu"),
                dtype="float32",
                autocast_lm=autocast_lm,
                exclude_special_tokens=exclude_special_tokens,
                disable_concat_sequences=disable_concat_sequences,
            )
        store._attach_pairs(list(pairs), seed=0)
        return store

    def _attach_pairs(self, pairs: list[MLPHooks], seed: int) -> None:
        self.pairs = pairs
        self.hooks = pairs[0]
        self.hook_name = pairs[0].hook_in
        self.d_in = sum(p.d_in + p.d_out for p in pairs)  # the packed width
        self.n_sequences_served = 0
        self.shuffle_seed = seed
        self.token_hash = None
        self._buffer = None

    @torch.no_grad()
    def get_paired_activations(
        self, batch_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mlp_in, mlp_out) of the first pair: ``[batch, context, d_in]`` and ``[…, d_out]``."""
        cache = self._capture(batch_tokens)
        return cache[self.hooks.hook_in], cache[self.hooks.hook_out]

    @torch.no_grad()
    def _capture(self, batch_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every hook of every pair, from one forward stopped after the last block needed."""
        names = list(dict.fromkeys(n for p in self.pairs for n in (p.hook_in, p.hook_out)))
        with torch.autocast(
            device_type=input_token_device(self.model).type,
            dtype=torch.bfloat16,
            enabled=self.autocast_lm,
        ):
            _, cache = self.model.run_with_cache(
                batch_tokens,
                names_filter=names,
                stop_at_layer=max(p.layer for p in self.pairs) + 1,
                prepend_bos=False,
                **self.model_kwargs,
            )
        sliced = slice(*self.seqpos_slice)
        return {name: cache[name][:, sliced] for name in names}

    @torch.no_grad()
    def get_activations(self, batch_tokens: torch.Tensor) -> torch.Tensor:
        """``[batch, context, Σ (d_in + d_out)]`` packed rows of ``batch_tokens``; in a
        data-parallel run this rank runs the model on its share of the sequences and the
        shares are all-gathered, in rank order."""
        world, rank = self.distributed.world_size, self.distributed.rank
        share = batch_tokens.shape[0] // world
        cache = self._capture(batch_tokens[rank * share : (rank + 1) * share])
        parts = [cache[n] for p in self.pairs for n in (p.hook_in, p.hook_out)]
        rows = torch.cat(parts, dim=-1).to(self.device, self.dtype)
        return self.distributed.gather(rows, self.data_group)

    def get_batch_tokens(
        self,
        batch_size: int | None = None,
        raise_at_epoch_end: bool = False,
        move_to_model_device: bool = True,
    ) -> torch.Tensor:
        tokens = super().get_batch_tokens(batch_size, raise_at_epoch_end, move_to_model_device)
        self.n_sequences_served += tokens.shape[0]
        if self.token_hash is not None:
            self.token_hash.update(tokens.to("cpu", torch.int64).numpy().tobytes())
        return tokens

    def get_data_loader(self) -> ShuffleBuffer:  # type: ignore[override]
        self.close()
        activations = self._iterate_filtered_activations()
        # n_batches_in_buffer store batches (of store_batch_size_prompts sequences) are pooled
        # and shuffled together before any batch is served
        rows_per_store_batch = self.store_batch_size_prompts * self.training_context_size
        buffer_rows = max(
            self.n_batches_in_buffer * rows_per_store_batch,
            min(self.min_shuffle_tokens, self.total_training_tokens),
        )
        refill: Callable[[], torch.Tensor] = activations.__next__
        if self.prefetch:
            depth = prefetch_depth(
                self.prefetch,
                buffer_rows - int(buffer_rows * self.activations_mixing_fraction),
                rows_per_store_batch,
            )
            agree = None
            if self.distributed.enabled:
                agree = partial(self.distributed.any, group=self.data_group)
            self._refill = BackgroundRefill(activations, self._position, depth, agree)
            refill = self._refill
        self._buffer = ShuffleBuffer(
            refill=refill,
            buffer_rows=buffer_rows,
            batch_rows=self.train_batch_size_tokens,
            mix_fraction=self.activations_mixing_fraction,
            seed=self.shuffle_seed,
            rank=self.distributed.rank,
            world_size=self.distributed.world_size,
        )
        return self._buffer

    def _position(self) -> Position:
        return self.n_sequences_served, self.n_dataset_processed

    def consumed_position(self) -> Position:
        """The stream position of the rows the buffer has taken: the live position, less
        whatever a background refill has computed ahead."""
        return self._refill.position if self._refill is not None else self._position()

    def model_paused(self) -> AbstractContextManager[None]:
        """A block in which no background forward runs, so the model may be used otherwise."""
        return self._refill.paused() if self._refill is not None else nullcontext()

    def close(self) -> None:
        """Stop a background refill (and its thread), if one runs."""
        if self._refill is not None:
            self._refill.close()
            self._refill = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        # SAELens's record of dataset rows read, as of the rows the buffer took
        return {"n_dataset_processed": torch.tensor(self.consumed_position()[1])}

    # --- checkpoints: the token position and the shuffle buffer ------------------------------

    def save_to_checkpoint(self, checkpoint_path: str | Path) -> None:
        super().save_to_checkpoint(checkpoint_path)
        state = {
            "n_sequences_served": torch.tensor(self.consumed_position()[0]),
            "world_size": torch.tensor(self.distributed.world_size),
        }
        if self._buffer is not None:
            state.update({f"buffer.{k}": v for k, v in self._buffer.state_dict().items()})
        save_file(state, str(Path(checkpoint_path) / PAIRED_STATE_FILENAME))

    def load_from_checkpoint(self, checkpoint_path: str | Path) -> None:
        path = Path(checkpoint_path) / PAIRED_STATE_FILENAME
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: the checkpoint was not written by mxd_saelens's runner, or "
                "was only partly copied."
            )
        state = load_file(str(path))
        saved_world = int(state.get("world_size", torch.tensor(1)))
        if saved_world != self.distributed.world_size:
            raise ValueError(
                f"the checkpoint {checkpoint_path} was written by {saved_world} process(es); "
                f"resume it with the same number (torchrun --nproc_per_node {saved_world}), not "
                f"{self.distributed.world_size}."
            )
        self.close()  # the stream is moved below: nothing may be computed ahead of it
        self._skip_sequences(int(state["n_sequences_served"].item()))
        buffer_state = {
            k.removeprefix("buffer."): v for k, v in state.items() if k.startswith("buffer.")
        }
        if buffer_state:
            loader = self.get_data_loader()
            loader.load_state_dict(buffer_state)
            self._dataloader = loader

    def _skip_sequences(self, n_sequences: int) -> None:
        """Advance the token stream by exactly as many sequences as the saved run had used."""
        while self.n_sequences_served < n_sequences:
            try:
                next(self.iterable_sequences)
            except StopIteration:
                self.iterable_sequences = self._iterate_tokenized_sequences()
                next(self.iterable_sequences)
            self.n_sequences_served += 1
