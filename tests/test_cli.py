"""The command line as a user meets it: fields read from the model, paired architectures only,
one-line errors, and a listing of the commands."""

from __future__ import annotations

import json
import shlex

import pytest

from mxd_saelens import zoo
from mxd_saelens.cli import COMMANDS, main, parse_train_args
from mxd_saelens.params import matched_size


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_bare_command_lists_every_subcommand_with_a_line(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert any(line.strip().startswith(name + " ") for line in out.splitlines()), name
    assert main(["--help"]) == 0


def test_unknown_command_is_one_line(capsys):
    assert main(["trian"]) == 2
    assert "trian" in _one_error_line(capsys)


def test_the_reported_command_now_replaces_the_mlp_not_an_identity(capsys):
    # before: blocks.0.hook_mlp_out → blocks.0.hook_mlp_out, d_hidden etc. never read
    cfg, hook_out, check = parse_train_args(
        shlex.split(
            "--architecture mxd --model_name tiny-gelu --dataset_path zoo --d_in 128 "
            "--n_experts 256 --log_to_wandb False"
        )
    )
    layer = zoo.default_layer("tiny-gelu")
    assert cfg.hook_name == f"blocks.{layer}.ln2.hook_normalized"
    assert hook_out == f"blocks.{layer}.hook_mlp_out"
    assert (cfg.sae.d_hidden, cfg.sae.activation, cfg.sae.glu) == (512, "gelu_tanh", False)
    assert cfg.sae.n_experts == 256 and check


def test_layer_and_matched_width_fill_every_field_from_the_model():
    cfg, hook_out, _ = parse_train_args(
        shlex.split(
            "--model_name tiny-gated --layer 1 --match_transcoder_width 4096 --k 16 "
            "--log_to_wandb False"
        )
    )
    assert (cfg.hook_name, hook_out) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    assert (cfg.sae.d_in, cfg.sae.d_out, cfg.sae.d_hidden) == (128, 128, 512)
    assert (cfg.sae.activation, cfg.sae.glu, cfg.sae.k) == ("silu", True, 16)
    assert cfg.sae.n_experts == matched_size("mxd", 128, 128, 512, True, 4096)["n_experts"]
    skip, _, _ = parse_train_args(
        shlex.split(
            "--architecture topk_skip_transcoder --model_name tiny-gelu --layer 3 "
            "--match_transcoder_width 4096 --log_to_wandb False"
        )
    )
    assert (
        skip.sae.d_sae == matched_size("topk_skip_transcoder", 128, 128, 512, False, 4096)["d_sae"]
    )
    assert skip.hook_name == "blocks.3.ln2.hook_normalized"


def test_help_shows_the_models_values_not_placeholders(capsys):
    with pytest.raises(SystemExit):
        parse_train_args(["--model_name", "tiny-gelu", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--d_in int (default: 128)" in text
    assert "--d_hidden int" in text and "(default: 512)" in text
    assert "(default: blocks.2.ln2.hook_normalized)" in text
    assert "--layer" in text and "--match_transcoder_width" in text and "--hook_name_out" in text


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ("--architecture topk", "does not replace an MLP"),
        ("--architecture standard --layer 2", "does not replace an MLP"),
        ("--model_name tiny-gelu --layer 9", "out of range"),
        ("--model_name tiny-gelu --layer 2 --d_in 64", "leave d_in out"),
        ("--model_name tiny-gelu --layer 2 --n_experts 64 --k 0", "k=0"),
        ("--model_name tiny-gelu --layer 2 --n_experts 64 --activation gelu2", "activation"),
        ("--model_name some-hub-model", "--layer L"),
    ],
)
def test_config_mistakes_are_one_error_line(flags: str, says: str, capsys):
    assert main(["train", *flags.split(), "--log_to_wandb", "False"]) == 2
    assert says in _one_error_line(capsys)


def test_train_through_the_command_line(tmp_path, capsys):
    out = tmp_path / "layer"
    code = main(
        [
            "train", "--model_name", "tiny-gelu", "--layer", "1", "--dataset_path", "zoo",
            "--n_experts", "128", "--k", "4", "--training_tokens", "4096",
            "--train_batch_size_tokens", "1024", "--store_batch_size_prompts", "8",
            "--n_eval_batches", "1", "--log_to_wandb", "False", "--checkpoint_path",
            str(tmp_path / "ckpt"), "--output_path", str(out), "--verbose", "False",
        ]
    )  # fmt: skip
    assert code == 0
    saved = json.loads((out / "cfg.json").read_text())
    assert saved["metadata"]["hook_name"] == "blocks.1.ln2.hook_normalized"
    assert saved["metadata"]["hook_name_out"] == "blocks.1.hook_mlp_out"
    assert (saved["d_hidden"], saved["activation"]) == (512, "gelu_tanh")
    assert "replacing tiny-gelu's MLP" in capsys.readouterr().err
