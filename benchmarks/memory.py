"""Peak memory of the demo, of ``mxd-saelens eval`` on 1, 6 and 30 layers over the whole
held-out split, and of training one layer streaming and from a cache.

Each measurement is one ``python -m mxd_saelens …`` subprocess under ``/usr/bin/time -v``: its
peak resident set (``Maximum resident set size``) and, sampled from ``/proc/PID/status`` every
``--sample_seconds``, its peak anonymous resident memory (``RssAnon``). A memory-mapped cache's
file pages count in the first and not in the second, so the two together tell a leak from a
mapped file.

The evaluated layers are three small layers (MxD, TopK and skip transcoders on the bundled
model's default MLP) trained once by a short demo; the 6 and 30 layers are copies of them in
separate folders, so that every layer is loaded and spliced on its own.

    python benchmarks/memory.py                         # everything (the demo takes the longest)
    python benchmarks/memory.py --only eval_1 eval_30   # some of it, merged into the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.common import write_result

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = ("mxd", "topk_transcoder", "topk_skip_transcoder")
MEASUREMENTS = (
    "demo",
    "eval_1",
    "eval_6",
    "eval_30",
    "train_streaming",
    "train_cached",
)


def _rss_anon_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (``/usr/bin/time`` runs Python as its child)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        todo += [int(c) for c in children]
    return found


def measure(args: list[str], log: Path, sample_seconds: float) -> dict[str, Any]:
    """Run ``python -m mxd_saelens ARGS`` under ``/usr/bin/time -v``; its peaks and the
    command."""
    command = [sys.executable, "-m", "mxd_saelens", *args]
    timing = log.with_suffix(".time")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's package, wherever run from
    peak_anon = 0
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            ["/usr/bin/time", "-v", "-o", str(timing), *command],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )

        def sample() -> None:
            nonlocal peak_anon
            while process.poll() is None:
                anon = sum(_rss_anon_kib(p) for p in _descendants(process.pid))
                peak_anon = max(peak_anon, anon)
                time.sleep(sample_seconds)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        sampler.join()
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited {code}; see {log}")
    report = timing.read_text()
    peak_rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", report).group(1))
    printed = re.search(r"peak resident memory: ([\d.]+) GiB", log.read_text())
    return {
        "command": " ".join(["python", "-m", "mxd_saelens", *args]),
        "peak_rss_mb": round(peak_rss / 1024, 1),
        "peak_rss_anon_mb": round(peak_anon / 1024, 1),
        "printed_peak_gib": float(printed.group(1)) if printed else None,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def trained_layers(work: Path, sample_seconds: float) -> list[Path]:
    """Three small layers, trained once by a short demo and reused."""
    source = work / "trained"
    if not all((source / name / "cfg.json").exists() for name in ARCHITECTURES):
        measure(
            [
                "demo",
                "--training_tokens",
                "40960",
                "--eval_sequences",
                "16",
                "--nospecialisation",
                "--out_dir",
                str(source),
            ],
            work / "train_small.log",
            sample_seconds,
        )
    return [source / name for name in ARCHITECTURES]


def layer_copies(work: Path, layers: list[Path], n: int) -> list[str]:
    """``n`` layer folders: the trained layers in turn, each copy in its own folder."""
    folders = []
    for i in range(n):
        folder = work / "copies" / f"layer{i:02d}"
        if not (folder / "cfg.json").exists():
            shutil.copytree(layers[i % len(layers)], folder, dirs_exist_ok=True)
        folders.append(str(folder))
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS))
    parser.add_argument("--work_dir", default=str(ROOT / "benchmarks" / "layers" / "memory"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory.json"))
    parser.add_argument(
        "--training_tokens", type=int, default=1_048_576, help="tokens trained on and cached"
    )
    parser.add_argument(
        "--n_sequences", type=int, help="held-out sequences per eval (default: the whole split)"
    )
    parser.add_argument("--sample_seconds", type=float, default=0.5)
    opts = parser.parse_args()
    work = Path(opts.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(opts.out)

    def run(name: str, args: list[str]) -> None:
        save({name: measure(args, work / f"{name}.log", opts.sample_seconds)})

    def save(new: dict[str, Any]) -> None:
        # merged with what is there: several invocations may measure different parts
        results = json.loads(out.read_text()).get("measurements", {}) if out.exists() else {}
        results.update(new)
        print(json.dumps(new), flush=True)
        summary: dict[str, Any] = {"measurements": results}
        if "eval_1" in results and "eval_30" in results:
            ratio = results["eval_30"]["peak_rss_mb"] / results["eval_1"]["peak_rss_mb"]
            summary["eval_30_over_eval_1_peak_rss"] = round(ratio, 3)
        summary["targets"] = {"demo_peak_rss_mb": 2048, "eval_30_over_eval_1_peak_rss": 1.5}
        write_result(out, summary)

    train = ["train", "--model_name", "tiny-gelu", "--layer", "2", "--k", "32"]
    train += ["--match_transcoder_width", "4096", "--lr", "0.01", "--log_to_wandb", "False"]
    train += ["--training_tokens", str(opts.training_tokens)]
    for name in opts.only:
        if name == "demo":
            run("demo", ["demo", "--out_dir", str(work / "demo_output")])
        elif name.startswith("eval_"):
            folders = layer_copies(work, trained_layers(work, opts.sample_seconds), int(name[5:]))
            subset = [] if opts.n_sequences is None else ["--n_sequences", str(opts.n_sequences)]
            out_dir = ["--out_dir", str(work / name)]
            run(name, ["eval", *folders, *subset, "--nospecialisation", *out_dir])
        elif name == "train_streaming":
            run(name, [*train, "--dataset_path", "zoo", "--output_path", str(work / name)])
        elif name == "train_cached":
            cache = work / "cache"
            shutil.rmtree(cache, ignore_errors=True)  # the cache command writes a new folder
            cache_run = measure(
                ["cache", "--model_name", "tiny-gelu", "--layers", "2", "--output_path", str(cache),
                 "--training_tokens", str(opts.training_tokens), "--dataset_path", "zoo"],
                work / "cache.log",
                opts.sample_seconds,
            )  # fmt: skip
            save({"cache": cache_run})
            cached = ["--cached_activations_path", str(cache), "--output_path", str(work / name)]
            run(name, [*train, *cached])


if __name__ == "__main__":
    main()
