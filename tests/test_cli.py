"""The command line as a user meets it: fields read from the model, paired architectures only,
flags generated from dataclasses, one-line errors, and a listing of the commands."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from mxd_saelens.cli.main import COMMANDS, EvalOptions, main, parse_options, parse_train_args
from mxd_saelens.cli.research import ProbeOptions, SteerOptions
from mxd_saelens.data.hooks import MLPHookMismatch
from mxd_saelens.saes.params import matched_size
from mxd_saelens.saes.traits import PAIRED_ARCHITECTURES
from mxd_saelens.zoo import ZooFileError

REPORTED = (
    "--architecture mxd --model_name tiny-gelu --dataset_path zoo --d_in 128 --n_experts 256 "
    "--log_to_wandb False"
)


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def _help(capsys, command: str, *flags: str) -> str:
    assert main([command, *flags, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())


def test_bare_command_lists_every_subcommand_with_a_line(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for name in (*COMMANDS, "dashboard"):
        assert any(line.strip().startswith(name + " ") for line in out.splitlines()), name
    assert main(["--help"]) == 0
    assert "train one layer that replaces a model's MLP" in capsys.readouterr().out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_commands_help_exits_0_with_its_flags(command: str, capsys):
    # a "%" in a field's help text is read as a format by argparse and breaks --help
    text = _help(capsys, command)
    assert text.startswith(f"usage: mxd-saelens {command}") and "--" in text


def test_unknown_command_is_one_line(capsys):
    assert main(["trian"]) == 2
    assert "trian" in _one_error_line(capsys)


def test_train_without_a_block_refuses_rather_than_train_saelens_default_hook(capsys):
    # before: this trained blocks.0.hook_mlp_out → blocks.0.hook_mlp_out, an identity map
    assert main(["train", *shlex.split(REPORTED)]) == 2
    assert "--layer L" in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("model", "shape"),
    [("tiny-gelu", (512, "gelu_tanh", False)), ("tiny-gated", (512, "silu", True))],
)
def test_layer_fills_hooks_and_the_mlps_shape_from_the_model(model: str, shape: tuple):
    cfg, hook_out, check = parse_train_args(
        shlex.split(f"--model_name {model} --layer 0 --n_experts 256 --log_to_wandb False")
    )
    assert (cfg.hook_name, hook_out) == ("blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out")
    assert (cfg.sae.d_in, cfg.sae.d_out) == (128, 128)
    assert (cfg.sae.d_hidden, cfg.sae.activation, cfg.sae.glu) == shape
    assert cfg.sae.n_experts == 256 and cfg.sae.k == 32 and check
    assert cfg.model_name == model


def test_a_hook_name_alone_names_the_block_and_explicit_fields_win():
    cfg, hook_out, _ = parse_train_args(
        shlex.split(
            "--model_name tiny-gelu --hook_name blocks.1.ln2.hook_normalized --n_experts 64 "
            "--d_hidden 256 --activation relu --check_mlp_hooks False --log_to_wandb False"
        )
    )
    assert (cfg.hook_name, hook_out) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    assert (cfg.sae.d_in, cfg.sae.d_hidden, cfg.sae.activation) == (128, 256, "relu")
    _, out, check = parse_train_args(
        shlex.split(
            "--layer 2 --n_experts 64 --hook_name_out blocks.2.hook_resid_post "
            "--check_mlp_hooks False --log_to_wandb False"
        )
    )
    assert (out, check) == ("blocks.2.hook_resid_post", False)


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
    for architecture in ("topk_transcoder", "topk_skip_transcoder"):
        tc, _, _ = parse_train_args(
            shlex.split(
                f"--architecture {architecture} --model_name tiny-gelu --layer 3 "
                "--match_transcoder_width 4096 --log_to_wandb False"
            )
        )
        assert tc.sae.d_sae == matched_size(architecture, 128, 128, 512, False, 4096)["d_sae"]
        assert tc.hook_name == "blocks.3.ln2.hook_normalized"
    tc, _, _ = parse_train_args(
        shlex.split("--architecture topk_transcoder --layer 3 --match_transcoder_width 4096")
    )
    assert tc.sae.d_sae == 4096


def test_help_shows_the_models_values_not_placeholders(capsys):
    text = _help(capsys, "train", "--model_name", "tiny-gelu", "--layer", "2")
    assert "(default: 128)" in text.split("--d_in int")[2].split(" --")[0]  # [1]: the usage
    assert "--d_hidden int" in text and "(default: 512)" in text
    assert "(default: blocks.2.ln2.hook_normalized)" in text
    for flag in ("--layer", "--match_transcoder_width", "--hook_name_out", "--check_mlp_hooks"):
        assert flag in text
    assert "(default: blocks.0.hook_mlp_out)" not in text


def test_help_without_a_model_shows_no_placeholder_sizes(capsys):
    text = _help(capsys, "train")
    for placeholder in ("(default: 512)", "(default: 1024)", "blocks.0.hook_mlp_out"):
        assert placeholder not in text
    assert "{" + ",".join(PAIRED_ARCHITECTURES) + "}" in text  # the only choices offered
    assert "L, the block whose MLP is replaced" in text  # --layer has help text


@pytest.mark.parametrize("architecture", ["topk", "standard", "batchtopk", "jumprelu"])
def test_non_paired_architectures_are_refused_listing_the_choices(architecture: str, capsys):
    assert main(["train", "--architecture", architecture, "--layer", "2"]) == 2
    line = _one_error_line(capsys)
    assert f"invalid choice: {architecture!r}" in line
    assert all(name in line for name in PAIRED_ARCHITECTURES)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        ("--model_name tiny-gelu --layer 9", "out of range"),
        (
            "--model_name tiny-gelu --layer 2 --d_in 64",
            "d_in=64 but block 2 of tiny-gelu has width 128",
        ),
        ("--model_name tiny-gelu --layer 2 --n_experts 64 --k 0", "k=0"),
        ("--model_name tiny-gelu --layer 2 --n_experts 64 --activation gelu2", "activation"),
        ("--model_name tiny-gelu --layer 2", "n_experts"),
        ("--model_name some-hub-model", "--layer L"),
        ("--layer 2 --n_expert 64", "unrecognized arguments: --n_expert"),  # before n_experts' own
        ("--layer two", "--layer"),
    ],
)
def test_config_mistakes_are_one_error_line(flags: str, says: str, capsys):
    assert main(["train", *flags.split(), "--log_to_wandb", "False"]) == 2
    assert says in _one_error_line(capsys)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["eval"], "LAYER"),
        (["eval", "/nonexistent/layer"], "/nonexistent/layer"),
        (["eval", "a", "--reference", "b"], "--reference"),
        (["eval", "a", "--n_sequnces", "4"], "--n_sequnces"),
        (["probe"], "--base_mlp"),
        (["probe", "--base_mlp", "--labels", "poetry"], "invalid choice: 'poetry'"),
        (["steer", "a_layer"], "--expert"),
        (["dashboard", "a_layer"], "--features"),
    ],
)
def test_eval_probe_and_steer_mistakes_are_one_error_line(argv: list[str], says: str, capsys):
    assert main(argv) == 2
    assert says in _one_error_line(capsys)


def _raises(error: BaseException):
    def command(args) -> None:
        raise error

    return command


@pytest.mark.parametrize(
    "error",
    [
        ZooFileError("/x/model.safetensors", "corrupt weights file", "make zoo"),
        MLPHookMismatch("the input hook is not what the MLP's weights see"),
        FileNotFoundError("no such file: layer/cfg.json"),
    ],
)
def test_the_packages_errors_are_one_line_and_bugs_still_raise(error, monkeypatch, capsys):
    monkeypatch.setitem(COMMANDS, "boom", ("raises", _raises(error)))
    assert main(["boom"]) == 2
    _one_error_line(capsys)
    monkeypatch.setitem(COMMANDS, "boom", ("raises", _raises(RuntimeError("a bug"))))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["boom"])
    monkeypatch.setitem(COMMANDS, "boom", ("raises", _raises(KeyboardInterrupt())))
    assert main(["boom"]) == 130


def test_eval_probe_steer_flags_come_from_dataclasses_with_the_old_names_and_defaults(capsys):
    ev = parse_options(EvalOptions, ["a", "b"], "eval", "")
    assert (ev.layers, ev.dataset_path, ev.n_sequences, ev.context_size) == (
        ["a", "b"],
        "zoo:heldout",
        None,
        128,
    )
    assert (ev.batch_size, ev.reference, ev.device, ev.out_dir) == (8, None, "cpu", "eval_output")
    pr = parse_options(ProbeOptions, ["a", "--base_mlp", "--per_class", "30"], "probe", "")
    assert (pr.layers, pr.base_mlp, pr.labels, pr.per_class) == (
        ["a"],
        True,
        "natural_language",
        30,
    )
    assert (pr.n_candidates, pr.seed, pr.batch_size, pr.out) == (100, 42, 16, "probe_results.json")
    st = parse_options(SteerOptions, ["a", "--expert", "3", "--strength", "0", "-30"], "steer", "")
    assert (st.layer, st.expert, st.strength, st.n_samples) == ("a", 3, [0.0, -30.0], 10)
    assert (st.max_new_tokens, st.reference, st.n_reference, st.out) == (
        32,
        "zoo:heldout",
        16,
        None,
    )
    for command, flag in [
        ("eval", "--n_sequences"),
        ("probe", "--labels_source"),
        ("dashboard", "--n_examples"),
        ("steer", "--n_promoted"),
    ]:
        text = _help(capsys, command)
        assert flag in text and "(default:" in text
        assert "Options(" not in text  # the dataclass's docstring, not its generated signature


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
    printed = capsys.readouterr()
    assert "replacing tiny-gelu's MLP" in printed.err
    assert re.search(r"^peak resident memory: \d+\.\d\d GiB$", printed.out, re.M)


def test_a_bundled_model_trains_on_the_bundled_corpus_unless_told_otherwise(capsys):
    cfg, _, _ = parse_train_args(shlex.split("--layer 2 --n_experts 64 --log_to_wandb False"))
    assert cfg.dataset_path == "zoo"
    cfg, _, _ = parse_train_args(
        shlex.split("--layer 2 --n_experts 64 --dataset_path my/data --log_to_wandb False")
    )
    assert cfg.dataset_path == "my/data"
    # a hub model has no default text: one error line, before the model is loaded
    flags = "--model_name some-org/some-model --hook_name blocks.2.ln2.hook_normalized "
    flags += "--d_in 8 --d_out 8 --d_hidden 32 --activation gelu --glu False --n_experts 64 "
    flags += "--log_to_wandb False"
    assert main(["train", *shlex.split(flags)]) == 2
    assert "--dataset_path" in _one_error_line(capsys)


def test_the_installed_console_script_runs_the_cli() -> None:
    """``mxd-saelens`` itself (the entry point pyproject.toml declares), beside this Python."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = shutil.which("mxd-saelens", path=str(Path(sys.executable).parent))
    assert script is not None, "mxd-saelens is not installed beside this Python (pip install -e .)"
    # the script imports this checkout's package, whatever copy is installed
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))),
    }
    done = subprocess.run([script, "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(name in done.stdout for name in COMMANDS)


# what SAELens's section comments put into the help before every flag had its own sentence
COMMENT_ARTEFACTS = (
    "Data Generating Function",
    "Training Distibuion",
    "Misc",
    "# ",
    "type: ignore",
    "Activation Store Parameters",
    "Training Parameters",
    "Resampling protocol",
    "Outputs/Checkpoints",
    "<__TEMP__>",
)
SECTION_NAMES = ("WANDB", "Evals")  # as the whole help of a flag


def _flag_helps(parser) -> dict[str, str]:
    """Each flag's help as shown (simple_parsing's placeholders and default suffix removed)."""
    parser.format_help()
    helps = {}
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = (action.help or "").replace("(default: %(default)s)", "").strip()
        flag = next(o for o in action.option_strings if o.startswith("--"))
        helps[flag] = " ".join(text.split())
    return helps


def _assert_readable(helps: dict[str, str], where: str) -> None:
    assert helps, where
    for flag, text in helps.items():
        assert text, f"{where} {flag} has no help"
        for artefact in COMMENT_ARTEFACTS:
            assert artefact not in text, f"{where} {flag}: {text!r}"
        assert text not in SECTION_NAMES, f"{where} {flag}: {text!r}"
    shared = {t for t in helps.values() if list(helps.values()).count(t) > 1}
    assert not shared, f"{where}: flags share a help text {shared}"


@pytest.mark.parametrize("architecture", PAIRED_ARCHITECTURES)
def test_every_train_flag_has_a_sentence_of_its_own(architecture: str, capsys):
    from mxd_saelens.cli.main import train_parser

    _, parser = train_parser(["--architecture", architecture, "--help"])
    helps = _flag_helps(parser)
    _assert_readable(helps, f"train --architecture {architecture}")
    for flag in ("--lr", "--adam_beta1", "--device", "--dtype", "--verbose", "--model_name"):
        assert helps[flag].endswith("."), (flag, helps[flag])
    text = _help(capsys, "train", "--architecture", architecture)
    for artefact in COMMENT_ARTEFACTS:
        assert artefact not in text, artefact
    assert "LoggingConfig(" not in text and "Config(d_in" not in text  # generated signatures
    assert "Adam's β1" in text and "Tokens the layer is trained on." in text


def test_every_flag_of_the_other_commands_has_help():
    from mxd_saelens.cli.parsing import CommandParser
    from mxd_saelens.cli.research import DashboardOptions
    from mxd_saelens.data.cache_writer import CacheConfig
    from mxd_saelens.demo import DemoOptions
    from mxd_saelens.hub.upload import UploadOptions

    for options in (EvalOptions, CacheConfig, DemoOptions, ProbeOptions, SteerOptions,
                    DashboardOptions, UploadOptions):  # fmt: skip
        parser = CommandParser(prog=options.__name__)
        parser.add_arguments(options, dest="options")
        _assert_readable(_flag_helps(parser), options.__name__)


def test_the_text_is_dataset_path_everywhere_and_the_old_flag_still_works(capsys):
    for command in ("eval", "dashboard", "cache"):
        text = _help(capsys, command)
        assert "--dataset_path" in text and "--dataset " not in text, command
    ev = parse_options(EvalOptions, ["a", "--dataset_path", "notes.txt"], "eval", "")
    assert ev.dataset_path == "notes.txt"
    capsys.readouterr()
    for flags in (["--dataset", "old.txt"], ["--dataset=old.txt"]):
        ev = parse_options(EvalOptions, ["a", *flags], "eval", "")
        assert ev.dataset_path == "old.txt"
        assert "--dataset is deprecated; use --dataset_path" in capsys.readouterr().err
    # train never took --dataset: it stays an unknown flag there, not a silent alias
    assert main(["train", "--layer", "2", "--n_experts", "8", "--dataset", "zoo"]) == 2
    assert "unrecognized arguments: --dataset" in _one_error_line(capsys)


def test_the_command_modules_do_not_import_each_other():
    import subprocess
    import sys

    code = "import sys, mxd_saelens.cli.research; print('mxd_saelens.cli.main' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
