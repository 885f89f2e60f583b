"""Print the table of bad inputs and the error each gets (the cases of
tests/test_bad_inputs.py), as Markdown.

    python scripts/bad_inputs_table.py > bad_inputs.md
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mxd_saelens as mxd
from mxd_saelens import zoo
from tests.test_bad_inputs import CASES, LAYER, MODEL, D, H, Workspace


def main() -> None:
    model = zoo.load(MODEL)
    print("| # | bad input | error |")
    print("|---|---|---|")
    for number, case in enumerate(CASES, 1):
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "saved"
            layer = mxd.MxD(
                mxd.MxDConfig(d_in=D, n_experts=64, k=4, d_hidden=H, activation="gelu_tanh")
            )
            layer.cfg.metadata.hook_name = f"blocks.{LAYER}.ln2.hook_normalized"
            layer.cfg.metadata.hook_name_out = f"blocks.{LAYER}.hook_mlp_out"
            layer.save_model(saved)
            work = Path(tmp) / "work"
            work.mkdir()
            try:
                case.run(Workspace(model=model, saved=saved, tmp=work))
                message = "NO ERROR"
            except BaseException as error:
                message = f"`{type(error).__name__}`: {error}"
        print(f"| {number} | {case.name} | {message.replace('|', '/')} |")


if __name__ == "__main__":
    main()
