"""SAELens's private API is used in one module, which checks it at import."""

from __future__ import annotations

import re
from pathlib import Path

from sae_lens.training.sae_trainer import SAETrainer

import mxd_saelens
from mxd_saelens.sae_lens_internals import check_private_api, missing_members

PACKAGE = Path(mxd_saelens.__file__).parent
PRIVATE_IMPORT = re.compile(r"from sae_lens[\w.]* import [^\n]*\b_[a-z]\w*|sae_lens[\w.]*\._[a-z]")


def test_the_installed_sae_lens_has_everything_relied_on() -> None:
    assert missing_members() == []
    check_private_api()


def test_a_missing_member_or_attribute_is_named() -> None:
    assert missing_members({SAETrainer: ("_train_step", "_gone")}, {}) == ["SAETrainer._gone"]
    assert missing_members({}, {SAETrainer: ("act_freq_scores", "gone_attr")}) == [
        "SAETrainer.gone_attr"
    ]


def test_no_other_module_imports_a_private_sae_lens_name() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name != "sae_lens_internals.py" and PRIVATE_IMPORT.search(path.read_text())
    ]
    assert offenders == []
