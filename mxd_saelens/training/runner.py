"""Training on a TransformerLens model's MLP through SAELens's runner and trainer.

``PairedTrainingRunner(cfg).run()`` takes the same ``LanguageModelSAERunnerConfig`` a SAELens
user already writes; ``cfg.hook_name`` is the MLP's input hook and the output hook is block L's
``hook_mlp_out`` unless ``hook_name_out`` (or ``cfg.sae.metadata.hook_name_out``) says
otherwise. What differs from SAELens's runner: a paired activation store, the output bias
started at the mean target, splicing metrics on eval steps (SAELens's own eval reconstructs
the input hook, which is wrong for a layer that predicts another hook), exact resumption, and
Ctrl-C saving a checkpoint at a step boundary. Before any training, the model's own MLP is run on
a few captured inputs and must reproduce the captured outputs (``check_mlp_hooks=False`` opts out
for a pair of hooks that is meant not to be the MLP's).

With ``cfg.cached_activations_path`` set, the batches come from a paired activation cache
(:mod:`mxd_saelens.data.cache_writer`) instead of the model's forward; the cache is checked against the
layer's model, block, widths and dtype before the model loads, and the MLP check runs on cached
rows. The model is still loaded for the splice evaluation (and an MxD's warm start).

``cfg.prefetch_llm_batches`` (SAELens's field; ``--prefetch_llm_batches True``) runs the
streaming store's model forwards in a background thread, overlapped with the training steps,
with the same batches and exact resumption (:class:`~mxd_saelens.data.paired_store.BackgroundRefill`);
evaluations pause it. Off by default, as in SAELens: it holds up to one refill of the buffer
in memory beside the buffer, and on a CPU the forward and the step share the same cores.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import wandb
from sae_lens import logger
from sae_lens.config import LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.constants import DTYPE_MAP, TRAINER_STATE_FILENAME
from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.activations_store import ActivationsStore
from torch import Tensor, nn
from transformer_lens.hook_points import HookedRootModule

from mxd_saelens import zoo
from mxd_saelens.data.cache_format import PairedCache, as_tensor, open_cache_for, uses_cache
from mxd_saelens.data.cache_reader import CachedPairedActivations
from mxd_saelens.data.hooks import MLPHooks, check_mlp_pair, resolve_mlp_hooks
from mxd_saelens.data.paired_store import (
    PairedActivationsStore,
    is_bundled_corpus,
    store_notices_silenced,
)
from mxd_saelens.data.sources import (
    load_dataset_source,
    load_language_model,
    paired_loading_options,
)
from mxd_saelens.evaluation.loss import evaluate_splice, flatten_metrics
from mxd_saelens.evaluation.splice import SplicedLayer
from mxd_saelens.training.distributed import Distributed, check_distributed_config
from mxd_saelens.training.trainer import PairedSAETrainer, scheduler_notices_silenced
from mxd_saelens.training.warm_start import mlp_weights, warm_start_, warm_start_transcoder_

SUPPORTED_NORMALIZATIONS = ("none", "expected_average_only_in")


class ScaledLayer(nn.Module):
    """A layer trained on activations scaled by s, seen from raw activations: y = f(s·x)/s."""

    def __init__(self, layer: nn.Module, scale: float):
        super().__init__()
        self.layer = layer
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x * self.scale) / self.scale

    def encode(self, x: Tensor) -> Tensor:
        return self.layer.encode(x * self.scale)  # type: ignore[operator]


@dataclass
class SpliceEvaluator:
    """Evaluates the layer spliced into the model on a fixed set of token sequences."""

    model: HookedRootModule
    hooks: MLPHooks
    tokens: Tensor
    batch_size: int

    @torch.no_grad()
    def __call__(
        self, sae: TrainingSAE[Any], data_provider: Any, activation_scaler: ActivationScaler
    ) -> dict[str, Any]:
        layer: nn.Module = sae
        if activation_scaler.scaling_factor is not None:
            layer = ScaledLayer(sae, activation_scaler.scaling_factor)
        metrics = evaluate_splice(
            self.model, SplicedLayer(layer, self.hooks), self.tokens, batch_size=self.batch_size
        )
        return flatten_metrics(metrics)


@dataclass
class ModelPaused:
    """An evaluator run with the store's background forwards paused: the evaluation runs the
    model too, with hooks of its own."""

    evaluator: Any
    store: PairedActivationsStore | CachedPairedActivations

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.store.model_paused():
            return self.evaluator(*args, **kwargs)


def check_runner_config(cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    """Reject the SAELens options that paired training cannot honour, saying why."""
    norm = cfg.sae.normalize_activations
    if norm not in SUPPORTED_NORMALIZATIONS:
        raise ValueError(
            f"normalize_activations={norm!r} is not supported for MLP replacement: it would "
            "normalise the input and the target with the input's statistics. Use one of "
            f"{SUPPORTED_NORMALIZATIONS} (the scale is applied to both and folded into the "
            "saved layer)."
        )
    _check_prefetch(cfg)
    if cfg.hook_head_index is not None:
        raise ValueError("hook_head_index does not apply to MLP hooks; leave it as None.")
    init = getattr(cfg.sae, "init", "paper")
    if init != "paper" and norm != "none":
        raise ValueError(
            f"init={init!r} copies the MLP's weights, which read unscaled activations: use "
            "normalize_activations='none' with it."
        )
    _check_numbers(cfg)
    for field, dtype in (("dtype", cfg.dtype), ("sae.dtype", cfg.sae.dtype)):
        if dtype not in DTYPE_MAP:
            raise ValueError(
                f"{field}={dtype!r} is not a dtype; choose one of {sorted(DTYPE_MAP)}."
            )
    for field, device in (("device", cfg.device), ("llm_device", cfg.llm_device)):
        if device is not None:
            _check_device(field, device)


def _check_prefetch(cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    prefetch = getattr(cfg, "prefetch_llm_batches", False)
    if not isinstance(prefetch, int) or prefetch < 0:  # bool is an int
        raise ValueError(
            f"prefetch_llm_batches={prefetch!r} must be True, False or a number of store "
            "batches to compute ahead (0 is off)."
        )
    if prefetch and uses_cache(cfg):
        raise ValueError(
            "prefetch_llm_batches overlaps the model's forward with training, but with "
            "cached_activations_path there is no forward: set it to False."
        )


def _check_numbers(cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    for field in ("training_tokens", "context_size", "train_batch_size_tokens", "lr"):
        value = getattr(cfg, field)
        if not value > 0:  # also catches NaN
            raise ValueError(f"{field}={value!r} must be positive.")


def _check_device(field: str, device: str) -> None:
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"{field}={device!r} is not a torch device ({error}).") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{field}={device!r}, but torch sees no CUDA device here; use 'cpu'.")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise ValueError(
            f"{field}={device!r}, but torch sees only {n} CUDA device(s) here: use cuda:0 to "
            f"cuda:{n - 1}."
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{field}={device!r}, but MPS is not available here; use 'cpu'.")


def check_against_model(model: HookedRootModule, cfg: LanguageModelSAERunnerConfig[Any]) -> None:
    """What the config asks of the model, checked before any data is read."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if n_ctx is not None and cfg.context_size > n_ctx:
        raise ValueError(
            f"context_size={cfg.context_size} is longer than {cfg.model_name}'s context window "
            f"(n_ctx={n_ctx}); set context_size to at most {n_ctx}."
        )


def check_checkpoint_folder(path: str | Path) -> Path:
    """A folder to resume from: it exists and holds a trainer state (checked before the model
    runs, so a typo does not cost a model load and a data pass)."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"resume_from_checkpoint={str(path)!r} is not a folder; give a checkpoint folder "
            "written by an interrupted run (named after its token count, under checkpoint_path)."
        )
    if not any(folder.rglob(TRAINER_STATE_FILENAME)):
        raise FileNotFoundError(
            f"{folder} holds no {TRAINER_STATE_FILENAME}: it is not a training checkpoint, or "
            "was only partly copied."
        )
    return folder


@contextmanager
def checkpoint_loading(path: str | Path) -> Iterator[None]:
    """Turn a checkpoint that would need unpickling (``torch.load`` with ``weights_only``, the
    default since torch 2.6) into an error that names the file."""
    try:
        yield
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"the trainer state under {path} holds objects other than tensors and plain "
            "values; it was not written by this package's runner, and is not unpickled. "
            f"({str(error).splitlines()[0]})"
        ) from error


def _check_widths(sae_cfg: TrainingSAEConfig, hooks: MLPHooks) -> None:
    d_out = getattr(sae_cfg, "d_out", sae_cfg.d_in)
    if sae_cfg.d_in != hooks.d_in or d_out != hooks.d_out:
        raise ValueError(
            f"the layer maps d_in={sae_cfg.d_in} → d_out={d_out}, but {hooks.hook_in} has width "
            f"{hooks.d_in} and {hooks.hook_out} has width {hooks.d_out}: set d_in={hooks.d_in} "
            f"and d_out={hooks.d_out}."
        )


def wants_hook_check(cfg: LanguageModelSAERunnerConfig[Any], check: bool | None) -> bool:
    """An explicit argument wins, then ``cfg.sae.metadata.check_mlp_hooks``; default on."""
    if check is not None:
        return check
    recorded = getattr(cfg.sae.metadata, "check_mlp_hooks", None)  # unset metadata reads None
    return True if recorded is None else bool(recorded)


@torch.no_grad()
def check_hook_pairs(
    model: HookedRootModule, pairs: Sequence[MLPHooks], tokens: Tensor, autocast: bool = False
) -> None:
    """Run the model on ``tokens`` and check every pair against its block's own MLP."""
    names = list(dict.fromkeys(n for p in pairs for n in (p.hook_in, p.hook_out)))
    _, cache = model.run_with_cache(
        tokens, names_filter=names, stop_at_layer=max(p.layer for p in pairs) + 1
    )
    for pair in pairs:
        check_mlp_pair(
            model, pair, cache[pair.hook_in], cache[pair.hook_out], rtol=5e-2 if autocast else 1e-3
        )


@torch.no_grad()
def check_cached_pairs(
    model: HookedRootModule, pairs: Sequence[MLPHooks], cache: PairedCache, n_rows: int = 256
) -> None:
    """:func:`check_hook_pairs` on a cache: every block's own MLP applied to cached inputs must
    reproduce the cached outputs (to bfloat16's precision for a bfloat16 or autocast cache)."""
    loose = cache.dtype == "bfloat16" or cache.manifest.get("autocast_lm", False)
    for pair in pairs:
        rows = as_tensor(cache.rows(pair.layer)[:n_rows], cache.dtype).float()
        device = next(iter(model.parameters())).device
        check_mlp_pair(
            model,
            pair,
            rows[:, : pair.d_in].to(device),
            rows[:, pair.d_in :].to(device),
            rtol=5e-2 if loose else 1e-3,
        )


def paired_data(
    model: HookedRootModule,
    cfg: LanguageModelSAERunnerConfig[Any],
    pairs: Sequence[MLPHooks],
    dataset: Any,
    cache: PairedCache | None,
    distributed: Distributed | None = None,
) -> PairedActivationsStore | CachedPairedActivations:
    """The training batches: from the cache when there is one, else from the model."""
    if cache is None:
        return PairedActivationsStore.from_runner_config(
            model, cfg, list(pairs), override_dataset=dataset, distributed=distributed
        )
    epochs = cfg.training_tokens / cache.n_tokens
    logger.info(f"training from {cache.path}: {cache.n_tokens} tokens, {epochs:.2f} epochs")
    distributed = distributed or Distributed()
    return CachedPairedActivations(
        cache,
        [p.layer for p in pairs],
        cfg.train_batch_size_tokens,
        cfg.seed,
        cfg.device,
        rank=distributed.rank,
        world_size=distributed.world_size,
        dtype=DTYPE_MAP[cfg.dtype],
    )


def load_training_model(
    cfg: LanguageModelSAERunnerConfig[Any], override_model: HookedRootModule | None = None
) -> tuple[HookedRootModule, dict[str, Any] | None]:
    """The model to train on, and the loading options to record in the layer: a model by name
    loads with its norms folded (:func:`~mxd_saelens.data.sources.paired_loading_options`); a model
    given as an object is used as it is (the MLP check refuses one with affine norms)."""
    if override_model is not None:
        return override_model, cfg.model_from_pretrained_kwargs
    options = paired_loading_options(cfg.model_class_name, cfg.model_from_pretrained_kwargs)
    model = load_language_model(
        cfg.model_name,
        cfg.model_class_name,
        device=cfg.llm_device or cfg.device,
        model_from_pretrained_kwargs=options,
    )
    return model, options


def set_layer_metadata(
    sae: TrainingSAE[Any],
    cfg: LanguageModelSAERunnerConfig[Any],
    hooks: MLPHooks,
    model_loading: dict[str, Any] | None = None,
) -> None:
    """What SAELens records about the data a layer was trained on, plus the output hook and
    the options the model was loaded with (``model_loading``; default the config's), so that
    the layer's model is loaded again as it was trained."""
    metadata = sae.cfg.metadata
    metadata.dataset_path = cfg.dataset_path
    metadata.hook_name = hooks.hook_in
    metadata.hook_name_out = hooks.hook_out
    metadata.model_name = cfg.model_name
    metadata.model_class_name = cfg.model_class_name
    metadata.hook_head_index = cfg.hook_head_index
    metadata.context_size = cfg.context_size
    metadata.seqpos_slice = cfg.seqpos_slice
    # a bundled model takes no loading options; recording SAELens's default would make every
    # load of the layer warn about them
    bundled = cfg.model_name in zoo.list_models()
    if model_loading is None:
        model_loading = cfg.model_from_pretrained_kwargs
    metadata.model_from_pretrained_kwargs = {} if bundled else model_loading
    metadata.prepend_bos = cfg.prepend_bos
    metadata.exclude_special_tokens = cfg.exclude_special_tokens
    metadata.sequence_separator_token = cfg.sequence_separator_token
    metadata.disable_concat_sequences = cfg.disable_concat_sequences


class WandbNotConfigured(ValueError):
    """wandb logging is on (SAELens's default) but wandb cannot start a run."""


def start_wandb_run(logging: LoggingConfig, config: dict[str, Any]) -> None:
    """``wandb.init`` from SAELens's logging config, with the ways out named when wandb has no
    account to log to."""
    try:
        wandb.init(
            project=logging.wandb_project,
            entity=logging.wandb_entity,
            config=config,
            name=logging.run_name,
            id=logging.wandb_id,
        )
    except wandb.errors.UsageError as error:
        raise WandbNotConfigured(
            f"wandb could not start a run ({error}). Log in with `wandb login`, log offline "
            "with WANDB_MODE=offline, or turn logging off with log_to_wandb=False "
            "(--log_to_wandb False)."
        ) from error


@torch.no_grad()
def warm_start_from_model(
    sae: nn.Module, model: HookedRootModule, hooks: MLPHooks, sample_inputs: Tensor, seed: int
) -> None:
    """A layer's ``init`` from the MLP it replaces (after the output bias is set, which
    ``init="mlp"`` replaces by the MLP's own): an MxD's, or a TopK transcoder's analogue;
    nothing for the paper's init."""
    init = getattr(sae.cfg, "init", "paper")
    if init == "paper":
        return
    if hooks.hook_out != f"blocks.{hooks.layer}.hook_mlp_out":
        raise ValueError(
            f"init={init!r} copies block {hooks.layer}'s MLP, but the layer's output hook is "
            f"{hooks.hook_out!r}, not that MLP's output; use init='paper' for this pair."
        )
    weights = mlp_weights(model, hooks.layer)
    if hasattr(sae, "W_experts"):
        warm_start_(sae, weights, init, sample_inputs, sae.cfg.init_noise, seed)  # type: ignore[union-attr]
    else:
        warm_start_transcoder_(sae, weights, init)


@torch.no_grad()
def initial_output_bias(
    targets: Iterator[Tensor],
    d_out: int,
    n_batches: int,
    distributed: Distributed | None = None,
) -> Tensor:
    """The mean target over ``n_batches`` batches of ``[batch, d_out]`` targets (over every
    rank's share of them, in a data-parallel run)."""
    total = torch.zeros(d_out + 1, dtype=torch.float64)  # Σ targets, and the count
    for _ in range(n_batches):
        batch = next(targets)
        total[:d_out] += batch.double().sum(0).cpu()
        total[d_out] += batch.shape[0]
    if distributed is not None:
        distributed.sum_(total)
    return (total[:d_out] / total[d_out]).float()


def evaluation_tokens(
    model: HookedRootModule, cfg: LanguageModelSAERunnerConfig[Any], dataset: Any
) -> Tensor:
    """A fixed set of sequences for eval steps and the hook check, read by a store of its own
    so that evaluating never moves the training stream."""
    streaming_cfg = copy.copy(cfg)  # a paired cache is not SAELens's: read text, not a cache
    streaming_cfg.use_cached_activations = False
    with store_notices_silenced(is_bundled_corpus(cfg.dataset_path)):
        store = ActivationsStore.from_config(model, streaming_cfg, override_dataset=dataset)
    batch = cfg.eval_batch_size_prompts or cfg.store_batch_size_prompts
    return torch.cat([store.get_batch_tokens(batch) for _ in range(cfg.n_eval_batches)])


def build_training_layer(cfg: LanguageModelSAERunnerConfig[Any]) -> TrainingSAE[Any]:
    """The training layer of ``cfg``, initialised from ``cfg.seed`` alone (so a layer's start
    does not depend on what was built before it), on ``cfg.device``."""
    if cfg.from_pretrained_path is not None:
        sae = TrainingSAE.load_from_disk(cfg.from_pretrained_path, cfg.device)
    else:
        torch.manual_seed(cfg.seed)
        sae_cfg = TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict())
        sae = TrainingSAE.from_dict(sae_cfg.to_dict())
    return sae.to(cfg.device)


class PairedTrainingRunner(LanguageModelSAETrainingRunner):
    """SAELens's language-model runner for layers that replace an MLP.

    Its ``__init__`` replaces SAELens's (which would build a single-hook store and evaluator);
    the saving and compiling methods are SAELens's own (see
    :mod:`mxd_saelens.sae_lens_internals`).
    """

    activations_store: PairedActivationsStore | CachedPairedActivations  # type: ignore[assignment]
    hooks: MLPHooks

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        override_dataset: Any = None,
        override_model: HookedRootModule | None = None,
        override_sae: TrainingSAE[Any] | None = None,
        hook_name_out: str | None = None,
        check_mlp_hooks: bool | None = None,
    ):
        check_runner_config(cfg)
        # a cache for another model, block, width or dtype is refused before the model loads
        cache = open_cache_for(cfg, hook_name_out) if uses_cache(cfg) else None
        self.distributed = Distributed.from_environment(cfg.device)
        check_distributed_config(cfg, self.distributed)
        if cfg.resume_from_checkpoint is not None:
            check_checkpoint_folder(cfg.resume_from_checkpoint)
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.model, self.model_loading = load_training_model(cfg, override_model)
        check_against_model(self.model, cfg)
        if override_dataset is None:
            override_dataset = load_dataset_source(cfg.dataset_path)
        self.hooks = resolve_mlp_hooks(
            self.model,
            hook_in=cfg.hook_name,
            hook_out=hook_name_out or cfg.sae.metadata.hook_name_out,
        )
        _check_widths(cfg.sae, self.hooks)
        eval_tokens = evaluation_tokens(self.model, cfg, override_dataset)
        if wants_hook_check(cfg, check_mlp_hooks):
            if cache is not None:
                check_cached_pairs(self.model, [self.hooks], cache)
            else:
                check_hook_pairs(self.model, [self.hooks], eval_tokens[:4], cfg.autocast_lm)
        self._compile_llm_if_needed()
        self.activations_store = paired_data(  # type: ignore[assignment]
            self.model, cfg, [self.hooks], override_dataset, cache, self.distributed
        )
        self.sae = (
            override_sae.to(cfg.device) if override_sae is not None else build_training_layer(cfg)
        )
        self.evaluator = SpliceEvaluator(  # type: ignore[assignment]
            model=self.model,
            hooks=self.hooks,
            tokens=eval_tokens,
            batch_size=cfg.eval_batch_size_prompts or cfg.store_batch_size_prompts,
        )

    def _set_sae_metadata(self) -> None:
        set_layer_metadata(self.sae, self.cfg, self.hooks, self.model_loading)

    @torch.no_grad()
    def _initialize_from_data(self, trainer: PairedSAETrainer) -> None:
        """Activation scale (if enabled) and the output bias at the mean target, before step 0."""
        store = self.activations_store
        if self.sae.cfg.normalize_activations == "expected_average_only_in":
            trainer.activation_scaler.estimate_scaling_factor(
                d_in=store.d_in,
                data_provider=store,
                n_batches_for_norm_estimate=self.cfg.n_batches_for_norm_estimate,
            )
        initialize = getattr(self.sae, "initialize_output_bias", None)
        if initialize is None:
            return
        targets = (trainer.activation_scaler(batch)[:, self.hooks.d_in :] for batch in store)
        n_batches = max(1, min(8, self.cfg.n_batches_for_norm_estimate))
        initialize(initial_output_bias(targets, self.hooks.d_out, n_batches, self.distributed))
        if getattr(self.sae.cfg, "init", "paper") != "paper":  # draws a batch only when needed
            sample = next(store)[:, : self.hooks.d_in]
            warm_start_from_model(self.sae, self.model, self.hooks, sample, self.cfg.seed)

    def run(self) -> TrainingSAE[Any]:
        try:
            return self._run()
        finally:  # a background refill's thread ends with the run, however it ends
            self.activations_store.close()

    def _run(self) -> TrainingSAE[Any]:
        self._set_sae_metadata()
        main = self.distributed.is_main  # the one process that logs, evaluates and writes
        log_to_wandb = self.cfg.logger.log_to_wandb and main
        if log_to_wandb:
            start_wandb_run(self.cfg.logger, self.cfg.to_dict())
        trainer_cfg = self.cfg.to_sae_trainer_config()
        if not main:
            trainer_cfg = dataclasses.replace(
                trainer_cfg, logger=dataclasses.replace(trainer_cfg.logger, log_to_wandb=False)
            )
        trainer = PairedSAETrainer(
            cfg=trainer_cfg,
            sae=self.sae,
            data_provider=self.activations_store,
            evaluator=ModelPaused(self.evaluator, self.activations_store),  # type: ignore[arg-type]
            save_checkpoint_fn=self.save_checkpoint,
            distributed=self.distributed,
        )
        if self.cfg.resume_from_checkpoint is not None:
            logger.info(f"Resuming from checkpoint: {self.cfg.resume_from_checkpoint}")
            with checkpoint_loading(self.cfg.resume_from_checkpoint):
                trainer.load_trainer_state(self.cfg.resume_from_checkpoint)
            self.sae.load_weights_from_checkpoint(self.cfg.resume_from_checkpoint)
            self.activations_store.load_from_checkpoint(self.cfg.resume_from_checkpoint)
        else:
            self._initialize_from_data(trainer)
            self.distributed.copy_from_main_(self.sae)
        self._compile_sae_if_needed()
        try:
            with (
                _stop_on_signals(trainer, same_signal_s=2.0 if self.distributed.enabled else 0),
                scheduler_notices_silenced(),
            ):
                sae = trainer.fit()
            # the final save logs a wandb artifact, so it runs before the run is finished
            if self.cfg.output_path is not None and main:
                self.save_final_sae(sae, self.cfg.output_path, trainer.log_feature_sparsity)
            self.distributed.barrier()
        finally:
            if log_to_wandb:
                wandb.finish()
        return sae


@contextmanager
def _stop_on_signals(trainer: PairedSAETrainer, same_signal_s: float = 0.0) -> Iterator[None]:
    """First Ctrl-C / SIGTERM: finish the step, save a checkpoint, stop. Second: stop now.

    A second signal within ``same_signal_s`` seconds of the first counts as the same request:
    under torchrun one Ctrl-C reaches a worker twice (from the terminal, and forwarded by
    torchrun)."""
    first: list[float] = []

    def request_stop(signum: int, frame: Any) -> None:
        if trainer.stop_requested:
            if time.monotonic() - first[0] <= same_signal_s:
                return
            raise KeyboardInterrupt
        logger.warning("stopping after this step and saving a checkpoint (Ctrl-C again to abort)")
        first.append(time.monotonic())
        trainer.stop_requested = True

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    installed = False
    try:
        for sig in previous:
            signal.signal(sig, request_stop)
        installed = True
    except ValueError:  # not the main thread: signals cannot be caught here
        pass
    try:
        yield
    finally:
        if installed:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
