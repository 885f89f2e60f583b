"""Help sentences for the flags ``mxd-saelens train`` takes from SAELens's configs.

simple_parsing reads a field's help from the comment or docstring beside it, and SAELens's
runner config groups its fields under section comments (``# Misc``, ``# Adam``), so those
would be the help of the field that follows them. Each flag gets its own sentence here
instead, keyed by the field's name; ``sae.<name>`` keys a field of the layer's config where the
runner config has a field of the same name. The layer configs defined in this package keep
their own docstrings.
"""

from __future__ import annotations

from collections.abc import Mapping

FLAG_HELP: dict[str, str] = {
    # LanguageModelSAERunnerConfig: the model and the text
    "sae": "The layer's config class, chosen by --architecture (the only choice offered).",
    "model_name": (
        "The TransformerLens model: a bundled one (tiny-gelu, tiny-gated) or a name "
        "HookedTransformer.from_pretrained knows."
    ),
    "model_class_name": "The TransformerLens class the model is loaded as.",
    "hook_name": (
        "The layer's input hook, the MLP's input: blocks.L.ln2.hook_normalized for --layer L "
        "(blocks.L.hook_resid_mid in a model without norms)."
    ),
    "hook_eval": "Unused by SAELens (deprecated; to be removed in SAELens 7).",
    "hook_head_index": "For a hook with a head dimension, the one head to train on.",
    "dataset_path": (
        "Training text: 'zoo' (the bundled corpus, the default for a bundled model), a local "
        "file or folder (json, jsonl, parquet, csv, txt), or a Hugging Face dataset name."
    ),
    "dataset_trust_remote_code": "Let a Hugging Face dataset run its own loading script.",
    "streaming": "Stream a Hugging Face dataset rather than download it whole.",
    "is_dataset_tokenized": (
        "Not read: SAELens tells from the dataset's columns (tokens or input_ids, else text)."
    ),
    "use_chat_formatting": "Tokenize each text with the tokenizer's chat template.",
    "context_size": "Tokens per sequence the model is run on.",
    "use_cached_activations": (
        "Train from activations written by mxd-saelens cache (set by --cached_activations_path)."
    ),
    "cached_activations_path": (
        "A folder written by mxd-saelens cache: train from it without running the model."
    ),
    "from_pretrained_path": "A saved layer to continue training from, instead of a fresh one.",
    "n_batches_in_buffer": (
        "Model batches pooled in the activation buffer before shuffling; more mixes better and "
        "uses more memory."
    ),
    "training_tokens": "Tokens the layer is trained on.",
    "store_batch_size_prompts": "Sequences per model forward when producing activations.",
    "seqpos_slice": (
        "Positions of each sequence kept for training, as a Python slice (start end [step])."
    ),
    "disable_concat_sequences": (
        "Do not join documents into full sequences; documents shorter than --context_size are "
        "dropped."
    ),
    "sequence_separator_token": (
        "Token placed between joined documents: bos, eos, sep, a token id, or None for none."
    ),
    "activations_mixing_fraction": (
        "Share of the activation buffer kept back to mix with the next batches; 0 serves "
        "activations in order."
    ),
    # devices, precision, speed
    "device": "Device the layer trains on, and the default for the model and the buffer.",
    "llm_device": "Device for the model; None means --device.",
    "act_store_device": "Device for the activation buffer; None means --device.",
    "prefetch_llm_batches": (
        "Produce the next activations in a background thread while the layer trains: True, or "
        "the queue's length."
    ),
    "seed": "Seed of the layer's initialisation and the data order.",
    "dtype": "Data type of the activations and the training (float32, bfloat16, …).",
    "prepend_bos": "Start each sequence with BOS; use what the model was trained with.",
    "autocast": "Train the layer under mixed-precision autocast.",
    "autocast_lm": "Run the model under mixed-precision autocast when producing activations.",
    "compile_llm": "Compile the model with torch.compile.",
    "llm_compilation_mode": "The torch.compile mode for the model; None is torch's default.",
    "compile_sae": "Compile the layer with torch.compile.",
    "sae_compilation_mode": "The torch.compile mode for the layer; None is torch's default.",
    # optimisation
    "train_batch_size_tokens": "Tokens per training step.",
    "adam_beta1": "Adam's β1, the decay of its running mean of gradients.",
    "adam_beta2": "Adam's β2, the decay of its running mean of squared gradients.",
    "lr": "Learning rate.",
    "lr_scheduler_name": (
        "Learning-rate schedule: constant, cosineannealing or cosineannealingwarmrestarts."
    ),
    "lr_warm_up_steps": "Steps over which the learning rate rises linearly from zero.",
    "lr_end": "Learning rate a cosine schedule ends at; None means --lr / 10.",
    "lr_decay_steps": "Steps of linear decay to zero at the end of training (0: none).",
    "n_restart_cycles": "Number of cycles of cosineannealingwarmrestarts.",
    "dead_feature_window": (
        "Steps without firing after which SAELens counts a code as dead (the dead-code "
        "auxiliary loss uses this)."
    ),
    "feature_sampling_window": (
        "Steps over which the codes' firing frequencies are gathered and logged."
    ),
    "dead_feature_threshold": "Firing frequency below which SAELens counts a code as dead.",
    # evaluation, saving, logging
    "n_eval_batches": (
        "Batches of SAELens's evaluation during training, run every --wandb_log_frequency × "
        "--eval_every_n_wandb_logs steps."
    ),
    "eval_batch_size_prompts": (
        "Sequences per batch of that evaluation; None means --store_batch_size_prompts."
    ),
    "n_checkpoints": "Checkpoints saved during training, evenly spaced (0: none).",
    "checkpoint_path": "Folder for checkpoints (a run id is appended); None saves none.",
    "save_final_checkpoint": "Also save a checkpoint when training ends, for resuming.",
    "output_path": "Folder the trained layer is saved to; None saves nothing.",
    "resume_from_checkpoint": "A checkpoint folder to resume an interrupted run from.",
    "verbose": "Show a progress bar and SAELens's messages.",
    "model_kwargs": "Keyword arguments for the model's run_with_cache, as JSON.",
    "model_from_pretrained_kwargs": (
        "Keyword arguments for the model's from_pretrained (a bundled model ignores them)."
    ),
    "sae_lens_version": "SAELens's version, recorded in the run's config (not to be set).",
    "sae_lens_training_version": (
        "SAELens's version that trained the layer, recorded in the layer's config (not to be set)."
    ),
    "exclude_special_tokens": (
        "Leave special-token positions out of training: True for BOS/EOS/PAD, or a list of "
        "token ids."
    ),
    "n_batches_for_norm_estimate": (
        "Batches used to estimate the activation norm when --normalize_activations asks for it."
    ),
    # LoggingConfig
    "log_to_wandb": "Log the run to Weights & Biases (WANDB_MODE=offline keeps it local).",
    "log_activations_store_to_wandb": "Also save the activation buffer's state as a W&B artifact.",
    "log_optimizer_state_to_wandb": "Also save the optimiser's state as a W&B artifact.",
    "log_weights_to_wandb": "Save the trained layer's weights as a W&B artifact.",
    "wandb_project": "W&B project of the run.",
    "wandb_id": "W&B run id, to continue a run; None starts a new one.",
    "run_name": "W&B run name; None names it after the architecture, width, learning rate and tokens.",
    "wandb_entity": "W&B user or team the run belongs to; None means yours.",
    "wandb_log_frequency": "Steps between W&B logs of the training losses.",
    "eval_every_n_wandb_logs": "W&B logs between SAELens's evaluations during training.",
    # the fields of SAELens's SAE config base class, in the layer's config
    "d_in": "The layer's input width: the MLP's, read from the model's config.",
    "d_sae": (
        "The layer's width: a transcoder's number of latents, an MxD's number of experts "
        "(for an MxD the same as --n_experts; give either)."
    ),
    "sae.dtype": "Data type the layer's weights are saved with.",
    "sae.device": "Device recorded in the layer's config; the layer trains on --device.",
    "apply_b_dec_to_input": (
        "Subtract the decoder bias from the input first (refused by this package's layers)."
    ),
    "normalize_activations": (
        "Rescale activations before training: none, or one of SAELens's normalisations."
    ),
    "reshape_activations": "hook_z: flatten attention heads before the layer (not for an MLP).",
    "metadata": "Recorded by the runner from the other flags (model, hooks, text); not to be set.",
    "decoder_init_norm": "Norm of each decoder row at initialisation; None leaves it unscaled.",
}

# argument groups whose dataclass has no docstring show its generated signature instead
GROUP_HELP: dict[str, str] = {
    "LoggingConfig": "Logging to Weights & Biases (SAELens's LoggingConfig).",
}


def help_for(dest: str, table: Mapping[str, str] = FLAG_HELP) -> str | None:
    """The sentence for the flag stored at ``dest`` (``cfg.sae.dtype``, ``cfg.lr``): the
    ``sae.<name>`` entry first for a field of the layer's config, then the field's name."""
    parts = dest.split(".")
    for key in (".".join(parts[-2:]), parts[-1]):
        if key in table:
            return table[key]
    return None
