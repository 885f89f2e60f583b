"""Helpers shared by the benchmark scripts: the record every result carries."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch


def environment() -> dict[str, Any]:
    """The command, the machine and what can move the figures: the processor's capability and
    the key package versions (mxd_saelens.evaluation.report.software_environment)."""
    from mxd_saelens.evaluation.report import software_environment

    return {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        **software_environment(),
    }


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**environment(), **result}, indent=2))
    print(f"wrote {path}")
    return path


def step_only_seconds(configs: dict[str, Any], store: Any, n_steps: int) -> dict[str, float]:
    """Each configured layer's ``n_steps`` training steps alone, on (up to 64) batches drawn from
    ``store`` beforehand: the rate a training run would have without its data pipeline."""
    from mxd_saelens.training.building import build_training_layer
    from mxd_saelens.training.trainer import PairedSAETrainer

    batches = [next(store) for _ in range(min(n_steps, 64))]
    seconds = {}
    for name, cfg in configs.items():
        trainer = PairedSAETrainer(
            cfg=cfg.to_sae_trainer_config(), sae=build_training_layer(cfg), data_provider=iter(())
        )
        trainer.step(batches[0])  # warm-up
        started = time.perf_counter()
        for i in range(n_steps):
            trainer.step(batches[i % len(batches)])
            trainer.n_training_steps += 1
        seconds[name] = time.perf_counter() - started
    return seconds
