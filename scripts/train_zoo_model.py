#!/usr/bin/env python3
"""Train the bundled tokenizer and the small TransformerLens models of ``mxd_saelens.zoo``.

Steps (each a sub-command):

* ``tokenizer``: byte-level BPE (vocab 4096, ``<|endoftext|>`` = BOS/EOS/PAD) trained with
  ``tokenizers`` on the corpus train split -> ``mxd_saelens/zoo/data/tokenizer.json``;
* ``model --name tiny-gelu|tiny-gated``: a 4-layer ``HookedTransformer`` trained with AdamW on
  the train split (context 128, every context starts with BOS), seeded, single CPU thread, bounded
  by a token budget and a wall-time budget -> ``mxd_saelens/zoo/data/<name>/`` with
  ``model.safetensors``, ``config.json`` and ``training.json`` (losses and per-layer MLP
  zero-ablation costs on the held-out split);
* ``evaluate --name ...``: recompute the held-out metrics of a saved model into training.json.

Run::

    python scripts/build_corpus.py
    python scripts/train_zoo_model.py tokenizer
    python scripts/train_zoo_model.py model --name tiny-gelu
    python scripts/train_zoo_model.py model --name tiny-gated
    python scripts/train_zoo_model.py evaluate --name tiny-gelu   # optional re-evaluation
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers: stay on one core
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import gzip
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "mxd_saelens" / "zoo" / "data"
CORPUS = DATA / "corpus"
SPECIAL = "<|endoftext|>"
VOCAB = 4096
N_CTX = 128
SEED = 42

# Architectures: GPT-2 style and Llama style, same widths.
ARCHS: dict[str, dict] = {
    "tiny-gelu": dict(
        normalization_type="LN", act_fn="gelu_new", positional_embedding_type="standard"
    ),
    "tiny-gated": dict(
        normalization_type="RMS",
        act_fn="silu",
        gated_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=32,
    ),
}
SIZES = dict(n_layers=4, d_model=128, n_heads=4, d_head=32, d_mlp=512, n_ctx=N_CTX, d_vocab=VOCAB)
DEFAULT_LAYER = 2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_texts(split: str) -> list[str]:
    with gzip.open(CORPUS / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(out: Path) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        min_frequency=2,
        special_tokens=[SPECIAL],  # id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t0 = time.time()
    tok.train_from_iterator(read_texts("train"), trainer=trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    assert tok.token_to_id(SPECIAL) == 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    log(f"tokenizer: vocab {tok.get_vocab_size()}, {time.time() - t0:.0f}s -> {out}")


# ----------------------------------------------------------------------------- data


def pack(texts: list[str], tok: Tokenizer) -> torch.Tensor:
    """Concatenate documents (each preceded by BOS) and cut into BOS + (N_CTX-1) token rows."""
    bos = tok.token_to_id(SPECIAL)
    stream: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        stream.append(bos)
        stream.extend(enc.ids)
    body = N_CTX - 1
    n = len(stream) // body
    rows = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), rows], dim=1)


# ----------------------------------------------------------------------------- model


def build_cfg(name: str):
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        **SIZES, **ARCHS[name], seed=SEED, default_prepend_bos=True, model_name=name
    )


def cfg_json(cfg) -> dict:
    """The HookedTransformerConfig fields needed to rebuild the model."""
    keys = [
        "n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab",
        "act_fn", "normalization_type", "positional_embedding_type", "gated_mlp",
        "rotary_dim", "rotary_base", "eps", "original_architecture", "model_name",
        "default_prepend_bos",
    ]  # fmt: skip
    return {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}


@torch.no_grad()
def eval_ce(model, data: torch.Tensor, batch: int = 64, ablate: int | None = None) -> float:
    """Mean next-token CE (nats/token) on ``data``; optionally zero-ablate one layer's MLP out."""
    hooks = []
    if ablate is not None:
        hooks = [(f"blocks.{ablate}.hook_mlp_out", lambda act, hook: torch.zeros_like(act))]
    total, count = 0.0, 0
    for i in range(0, len(data), batch):
        x = data[i : i + batch]
        loss = model.run_with_hooks(x, return_type="loss", fwd_hooks=hooks)
        n = x.numel() - x.shape[0]  # predicted positions
        total += loss.item() * n
        count += n
    return total / count


def lr_at(progress: float, step: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warm-up then cosine decay to ``floor * peak``; progress is in [0, 1]."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def held_metrics(model, held: torch.Tensor, n_layers: int) -> dict:
    """Held-out CE and the CE cost of zero-ablating each layer's MLP output."""
    clean = eval_ce(model, held)
    log(f"heldout CE {clean:.4f} on {held.numel():,} tokens")
    ablation = {}
    for layer in range(n_layers):
        ce = eval_ce(model, held, ablate=layer)
        ablation[str(layer)] = {"ce": round(ce, 4), "delta": round(ce - clean, 4)}
        log(f"  zero-ablate blocks.{layer}.hook_mlp_out: CE {ce:.3f} (+{ce - clean:.3f})")
    cost = ablation[str(DEFAULT_LAYER)]["delta"]
    if cost < 0.1:
        log(f"WARNING: layer {DEFAULT_LAYER} MLP ablation costs only {cost:.3f} nats (< 0.1)")
    return {
        "heldout_loss": round(clean, 4),
        "heldout_tokens": int(held.numel()),
        "heldout_note": "whole held-out split, packed into BOS + 127-token rows",
        "mlp_zero_ablation": ablation,
        "mlp_zero_ablation_note": "held-out CE with blocks.L.hook_mlp_out set to 0; delta vs clean",
    }


def load_heldout() -> torch.Tensor:
    tok = Tokenizer.from_file(str(DATA / "tokenizer.json"))
    return pack(read_texts("heldout"), tok)


def evaluate(args: argparse.Namespace) -> None:
    """Recompute the held-out metrics of a saved model and update its training.json."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.set_num_threads(1)
    out = DATA / args.name
    conf = json.loads((out / "config.json").read_text())
    cfg = HookedTransformerConfig(**conf["hooked_transformer_config"], init_weights=False)
    model = HookedTransformer(cfg)
    model.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    model.eval()
    info = json.loads((out / "training.json").read_text())
    info.update(held_metrics(model, load_heldout(), cfg.n_layers))
    info["eval_command"] = f"python scripts/train_zoo_model.py evaluate --name {args.name}"
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"updated {out / 'training.json'}")


def train_model(args: argparse.Namespace) -> None:
    from transformer_lens import HookedTransformer

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    tok_path = DATA / "tokenizer.json"
    if not tok_path.exists():
        sys.exit(f"{tok_path} missing: run `python scripts/train_zoo_model.py tokenizer` first")
    tok = Tokenizer.from_file(str(tok_path))
    t0 = time.time()
    train = pack(read_texts("train"), tok)
    held = pack(read_texts("heldout"), tok)
    held_probe = held[:: max(1, len(held) // 128)][:128]  # spread over all labels
    log(f"data: train {train.numel():,} tokens ({len(train)} rows), heldout {held.numel():,}")
    log(f"tokenising took {time.time() - t0:.0f}s")

    cfg = build_cfg(args.name)
    model = HookedTransformer(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{args.name}: {n_params:,} parameters")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
        betas=(0.9, 0.95),
    )

    rng = np.random.default_rng(SEED)
    total_steps = max(1, args.max_tokens // (args.batch_size * N_CTX))
    order = rng.permutation(len(train))
    pos, step, tokens, recent = 0, 0, 0, []
    budget_s = args.time_budget_min * 60
    start = time.time()
    stopped_by = "token_budget"
    model.train()
    while step < total_steps:
        elapsed = time.time() - start
        if elapsed > budget_s:
            stopped_by = "time_budget"
            break
        if pos + args.batch_size > len(order):  # new epoch
            order, pos = rng.permutation(len(train)), 0
        x = train[order[pos : pos + args.batch_size]]
        pos += args.batch_size
        # the LR schedule follows whichever budget (tokens or time) runs out first
        progress = max(step / total_steps, elapsed / budget_s)
        lr = lr_at(progress, step, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = model(x, return_type="loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += x.numel()
        recent = [*recent, loss.item()][-50:]
        if step % args.log_every == 0 or step == 1:
            log(
                f"step {step}/{total_steps} tok {tokens:,} loss {np.mean(recent):.3f} lr {lr:.2e} "
                f"{tokens / (time.time() - start):.0f} tok/s elapsed {(time.time() - start) / 60:.1f} min"
            )
        if args.eval_every and step % args.eval_every == 0:
            model.eval()
            log(f"  heldout CE (probe) {eval_ce(model, held_probe):.3f}")
            model.train()
    wall = time.time() - start
    model.eval()
    final_train = float(np.mean(recent))
    log(f"done: {step} steps, {tokens:,} tokens, {wall / 60:.1f} min; train {final_train:.3f}")
    metrics = held_metrics(model, held, cfg.n_layers)

    out = DATA / args.name
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"name": args.name, "format": "pt"})
    config = {
        "name": args.name,
        "default_layer": DEFAULT_LAYER,
        "hooked_transformer_config": cfg_json(cfg),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    info = {
        "name": args.name,
        "command": "python scripts/train_zoo_model.py "
        + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "default_layer": DEFAULT_LAYER,
        "n_params": n_params,
        "seed": SEED,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "optimizer": {
            "name": "AdamW",
            "lr": args.lr,
            "betas": [0.9, 0.95],
            "weight_decay": args.weight_decay,
            "warmup_steps": args.warmup,
            "schedule": "linear warm-up, cosine to 10% of peak",
            "grad_clip": 1.0,
            "batch_size": args.batch_size,
            "context": N_CTX,
        },
        "steps": step,
        "tokens": tokens,
        "max_tokens": args.max_tokens,
        "time_budget_min": args.time_budget_min,
        "stopped_by": stopped_by,
        "wall_time_s": round(wall, 1),
        "final_train_loss": round(final_train, 4),
        "final_train_loss_note": "mean over the last 50 training steps",
        **metrics,
        "units": "nats/token",
    }
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"saved {out}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tokenizer", help="train tokenizer.json on the corpus train split")
    m = sub.add_parser("model", help="train one model")
    m.add_argument("--name", choices=sorted(ARCHS), required=True)
    e = sub.add_parser("evaluate", help="recompute held-out metrics of a saved model")
    e.add_argument("--name", choices=sorted(ARCHS), required=True)
    m.add_argument(
        "--max-tokens", type=int, default=6_000_000, help="token budget (sets the LR schedule)"
    )
    m.add_argument("--time-budget-min", type=float, default=22.0, help="hard wall-time stop")
    m.add_argument("--batch-size", type=int, default=32)
    m.add_argument("--lr", type=float, default=2e-3)
    m.add_argument("--warmup", type=int, default=100)
    m.add_argument("--weight-decay", type=float, default=0.1)
    m.add_argument("--eval-every", type=int, default=250)
    m.add_argument("--log-every", type=int, default=25)
    args = ap.parse_args()
    if args.cmd == "tokenizer":
        train_tokenizer(DATA / "tokenizer.json")
    elif args.cmd == "evaluate":
        evaluate(args)
    else:
        train_model(args)


if __name__ == "__main__":
    main()
