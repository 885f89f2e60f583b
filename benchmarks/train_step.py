#!/usr/bin/env python
"""Time one full training step of MxD, its dense formulation, a TopK transcoder and SAELens's
TopK SAE, parameter-matched, and record each variant's peak memory.

A step is: forward, loss, backward, ``torch.optim.Adam`` step, ``zero_grad``. For every setting
(width I = O, k) each variant runs in a fresh subprocess: imports, data creation, a memory
baseline, then the layer and its optimiser, warm-up steps and timed steps; the step time is the
median of the timed steps and the peak memory is the child's ``ru_maxrss`` after its steps
(reported both raw and minus the baseline).

Variants (the sparse path: docs/design.md §2.1):
  mxd_fast         MxDTrainingSAE.training_forward_pass (sparse top-k backward, gathered C rows)
  mxd_dense        the same module, loss from forward_dense(x) (dense gate with autograd, top-k
                   scattered into a dense a, dense a @ C over all N experts: the paper's code)
  topk_transcoder  TopKTranscoderTrainingSAE.training_forward_pass, d_sae = 32·I
  saelens_topk     sae_lens.TopKTrainingSAE.training_forward_pass on x alone, d_sae chosen so its
                   parameter count matches the transcoder's

Parameter matching: the transcoder has d_sae = 32·I; the MxD has H = 4·I and
N = matched_n_experts(I, I, 4·I, 32·I).

    python benchmarks/train_step.py                       # default sweep, 1 thread
    python benchmarks/train_step.py --threads 2 --repeats 7
    python benchmarks/train_step.py --sizes 256 --ks 32 --repeats 3   # quick check
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "train_step.json"
VARIANTS = ("mxd_fast", "mxd_dense", "topk_transcoder", "saelens_topk")
# ratio name -> (numerator, denominator, target: the ratio must be at most this)
TARGETS = {
    "mxd_fast/mxd_dense": ("mxd_fast", "mxd_dense", 0.4),
    "mxd_fast/saelens_topk": ("mxd_fast", "saelens_topk", 0.3),
    "mxd_fast/topk_transcoder": ("mxd_fast", "topk_transcoder", 1.5),
}
RESULT_TAG = "TRAIN_STEP_RESULT "


def _maxrss_mb() -> float:
    # Linux reports ru_maxrss in KiB, macOS in bytes
    scale = 1.0 if sys.platform == "darwin" else 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


# --- the child: one variant, one setting ----------------------------------------------------


def _build(variant: str, d: int, k: int, shapes: dict[str, int], packed: Any, x: Any) -> Any:
    """The layer, and a function computing one step's loss."""
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    import mxd_saelens as mxd
    from mxd_saelens.saes.paired import reconstruction_loss, split_pair

    def step_input(sae_in: torch.Tensor) -> TrainStepInput:
        return TrainStepInput(
            sae_in=sae_in,
            coefficients={},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )

    if variant in ("mxd_fast", "mxd_dense"):
        layer = mxd.MxDTrainingSAE(
            mxd.MxDTrainingSAEConfig(
                d_in=d, d_out=d, d_hidden=shapes["d_hidden"], n_experts=shapes["n_experts"], k=k
            )
        )
        if variant == "mxd_fast":
            inp = step_input(packed)
            return layer, lambda: layer.training_forward_pass(inp).loss

        def dense_loss() -> torch.Tensor:
            # what training_forward_pass does, with the dense formulation of the layer
            layer.normalize_experts()
            x_in, target = split_pair(packed, d, d)
            return reconstruction_loss(layer.forward_dense(x_in), target, layer.cfg.loss)

        return layer, dense_loss
    if variant == "topk_transcoder":
        layer = mxd.TopKTranscoderTrainingSAE(
            mxd.TopKTranscoderTrainingSAEConfig(d_in=d, d_out=d, d_sae=shapes["d_sae"], k=k)
        )
        inp = step_input(packed)
        return layer, lambda: layer.training_forward_pass(inp).loss
    if variant == "saelens_topk":
        layer = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=shapes["saelens_d_sae"], k=k))
        inp = step_input(x)
        return layer, lambda: layer.training_forward_pass(inp).loss
    raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def run_child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import mxd_saelens
    from mxd_saelens import parameter_count

    shapes = json.loads(args.shapes)
    d, k = args.size, args.k
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, d, generator=gen)
    y = torch.randn(args.batch, d, generator=gen)
    packed = torch.cat([x, y], dim=-1)
    baseline_mb = _maxrss_mb()

    torch.manual_seed(args.seed)
    layer, loss_fn = _build(args.variant, d, k, shapes, packed, x)
    layer.train()
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-4)

    def step() -> float:
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    times_ms = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        loss_value = step()
        times_ms.append((time.perf_counter() - start) * 1000.0)
    peak_mb = _maxrss_mb()
    result = {
        "variant": args.variant,
        "ms": round(statistics.median(times_ms), 1),
        "ms_min": round(min(times_ms), 1),
        "ms_all": [round(t, 1) for t in times_ms],
        "peak_mb": round(peak_mb, 1),
        "baseline_mb": round(baseline_mb, 1),
        "peak_minus_baseline_mb": round(peak_mb - baseline_mb, 1),
        "parameters": parameter_count(layer),
        "threads": torch.get_num_threads(),
        "final_loss": round(loss_value, 6),
        "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
        "mxd_saelens": getattr(mxd_saelens, "__version__", "?"),
    }
    print(RESULT_TAG + json.dumps(result), flush=True)


# --- the parent: the sweep ------------------------------------------------------------------


def matched_shapes(d: int) -> dict[str, int]:
    """Parameter-matched widths for I = O = d (docs/design.md §2.3)."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    from mxd_saelens import matched_n_experts, parameter_count, transcoder_parameter_count

    d_sae = 32 * d
    budget = transcoder_parameter_count(d, d_sae, d)
    # a TopK SAE has W_enc, b_enc, W_dec, b_dec: 2·I·S + S + I; check the neighbours by counting
    guess = round((budget - d) / (2 * d + 1))
    best = min(
        range(max(1, guess - 1), guess + 2),
        key=lambda s: abs(
            parameter_count(TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=s, k=1))) - budget
        ),
    )
    return {
        "d_in": d,
        "d_out": d,
        "d_sae": d_sae,
        "d_hidden": 4 * d,
        "n_experts": matched_n_experts(d, d, 4 * d, d_sae),
        "saelens_d_sae": best,
        "transcoder_parameters": budget,
    }


def run_variant(args: argparse.Namespace, variant: str, d: int, k: int, shapes: dict) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--variant", variant,
        "--size", str(d),
        "--k", str(k),
        "--batch", str(args.batch),
        "--repeats", str(args.repeats),
        "--warmup", str(args.warmup),
        "--threads", str(args.threads),
        "--seed", str(args.seed),
        "--shapes", json.dumps(shapes),
    ]  # fmt: skip
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    raise RuntimeError(
        f"{variant} at I={d}, k={k} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    )


def ratios_of(ms: dict[str, float]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, (num, den, target) in TARGETS.items():
        if num in ms and den in ms:
            value = ms[num] / ms[den]
            out[name] = {"value": round(value, 3), "target_max": target, "met": value <= target}
    return out


def format_table(settings: list[dict]) -> str:
    variants = [v for v in VARIANTS if any(v in s["variants"] for s in settings)]
    head = ["I", "k"] + [f"{v} ms (MB)" for v in variants] + list(TARGETS)
    rows = []
    for s in settings:
        row = [str(s["d_in"]), str(s["k"])]
        for v in variants:
            r = s["variants"].get(v)
            row.append(f"{r['ms']:.0f} ({r['peak_minus_baseline_mb']:.0f})" if r else "-")
        for name in TARGETS:
            r = s["ratios"].get(name)
            row.append(f"{r['value']:.2f} {'ok' if r['met'] else 'MISS'}" if r else "-")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    targets = ", ".join(f"{n} <= {t[2]}" for n, t in TARGETS.items())
    lines.append(f"ms: median step; MB: peak RSS minus the child's baseline. Targets: {targets}.")
    return "\n".join(lines)


def run_sweep(args: argparse.Namespace) -> None:
    import sae_lens
    import torch

    started = time.time()
    record: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "python": sys.executable,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "sae_lens": getattr(sae_lens, "__version__", "?"),
        "threads": args.threads,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
        },
        "batch": args.batch,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "step": "forward, loss, backward, torch.optim.Adam(lr=1e-4).step(), zero_grad()",
        "targets": {n: t[2] for n, t in TARGETS.items()},
        "settings": [],
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for d in args.sizes:
        shapes = matched_shapes(d)
        for k in args.ks:
            setting: dict[str, Any] = {**shapes, "k": k, "variants": {}}
            for variant in args.variants:
                print(f"I={d} k={k} {variant} ...", end=" ", flush=True, file=sys.stderr)
                result = run_variant(args, variant, d, k, shapes)
                print(
                    f"{result['ms']:.0f} ms, +{result['peak_minus_baseline_mb']:.0f} MB",
                    file=sys.stderr,
                )
                setting["variants"][variant] = result
            ms = {v: r["ms"] for v, r in setting["variants"].items()}
            setting["ratios"] = ratios_of(ms)
            record["settings"].append(setting)
            record["wall_s"] = round(time.time() - started, 1)
            record["machine"]["loadavg_at_end"] = [round(v, 2) for v in os.getloadavg()]
            out_path.write_text(json.dumps(record, indent=2) + "\n")
    print(format_table(record["settings"]))
    print(f"wrote {out_path} ({record['wall_s']:.0f} s)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[256, 512], help="I = O (default 256 512)"
    )
    p.add_argument("--ks", type=int, nargs="+", default=[32, 64, 128], help="k (default 32 64 128)")
    p.add_argument("--batch", type=int, default=4096, help="tokens per step (default 4096)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON output path")
    # internal: one variant in this process
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    p.add_argument("--shapes", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        run_child(args)
    else:
        run_sweep(args)


if __name__ == "__main__":
    main()
