"""The README's Python blocks run as written, in order, in one fresh interpreter (the blocks
build on each other, as a reader would run them), so the README cannot drift from the code."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
HUB_ONLY = "Skylion007/openwebtext"  # a config that names hub data; building it downloads nothing


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_has_the_blocks_a_reader_needs():
    blocks = python_blocks(README.read_text())
    joined = "\n".join(blocks)
    assert len(blocks) >= 5
    for needed in ("PairedTrainingRunner", "MultiPairedTrainingRunner", "splice(", "steering."):
        assert needed in joined, needed
    assert HUB_ONLY in joined


def test_every_python_block_of_the_readme_runs_as_written(tmp_path):
    script = "\n\n".join(python_blocks(README.read_text()))
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    done = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # what the blocks promise to leave behind
    for folder in ("mxd_layer", "sweep/mxd-k16", "sweep/mxd-k32", "sweep/topk_transcoder-k32"):
        assert (tmp_path / folder / "cfg.json").is_file(), folder
    for printed in ("delta_ce_diff_se", "fires on", "base MLP neurons", "fluency CE"):
        assert printed in done.stdout, printed


def bash_commands(text: str) -> list[str]:
    """The commands of the README's ``bash`` blocks that call ``mxd-saelens``, continuation
    lines joined and trailing comments dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("mxd-saelens "):
                commands.append(line)
    return commands


def test_every_command_line_of_the_readme_runs_as_written(tmp_path):
    commands = bash_commands(README.read_text())
    assert len(commands) >= 6
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)}
    for command in commands:
        argv = [sys.executable, "-m", "mxd_saelens", *shlex.split(command)[1:]]
        done = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, (command, done.stderr[-2000:])
    for made in ("mxd_layer/cfg.json", "tc_layer/cfg.json", "dashboard.html"):
        assert (tmp_path / made).is_file(), made
