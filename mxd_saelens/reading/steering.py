"""Steering: add a constant to one code at every position while the model generates.

Mechanism: the layer is spliced with ``use_error_term=True`` and a hook on its
``hook_sae_acts_post`` adds ``strength`` to code n. Block L's MLP output becomes
``mlp_out + (layer(a + s·e_n) − layer(a))``: the model changes by exactly what the edit does to
the layer's output, and its reconstruction error stays out of the picture (plain splicing would
add it to every generation, steered or not). At strength 0 the model is untouched. For an MxD
the change is ``s · c_n ⊙ (Dᵀz)`` (it depends on the context through z); for a transcoder it
is ``s · W_dec[n]``. Generation is the model's own ``generate``.

Stand-ins for the paper's LLM judges (prompt "Let's talk about ", 32 new tokens, 10 samples):

- ``promoted_logprob``: the mean log-probability the steered model gives the code's promoted
  tokens at the generated positions; the promoted tokens are the top ``n_promoted`` of the
  code's output direction read through the unembedding (for an MxD expert the direction is
  its mean output change ``c_n ⊙ (Dᵀz̄)`` over reference tokens, see :mod:`analysis`);
- ``promoted_fraction``: the share of generated tokens that are promoted tokens;
- ``fluency_ce``: the cross-entropy of the generated tokens under the unsteered model;
- ``judge_score``: any ``judge(prompt, generations) -> float`` the user supplies.

The paper's constant, 100, was set for GPT-2's coefficients; compare the strength with the
code's typical value when it fires (``SteeringResult.code_scale``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens.hook_points import HookedRootModule, HookPoint

from mxd_saelens.data.tokens import keep_mask
from mxd_saelens.evaluation.splice import splice
from mxd_saelens.reading.analysis import check_code, logit_direction, mean_hidden, output_direction
from mxd_saelens.reading.directions import is_mxd
from mxd_saelens.reading.probing import LayerCodes

PAPER_PROMPT = "Let's talk about "
PAPER_STRENGTH = 100.0

Judge = Callable[[str, list[str]], float]


@contextmanager
def steering(
    model: HookedRootModule, layer: nn.Module, code: int, strength: float
) -> Iterator[None]:
    """Inside the context, every forward of ``model`` has ``strength`` added to ``code``."""
    check_code(layer, code)

    def add(acts: Tensor, hook: HookPoint) -> Tensor:
        # generate() runs in inference mode, whose tensors have no version counter; the
        # layers read one from the hook's output, so return an ordinary tensor
        with torch.inference_mode(False):
            acts = acts.clone()
            acts[..., code] += strength
        return acts

    # a context hook on the layer's own hook point: leaving removes exactly it
    with (
        layer.hooks(fwd_hooks=[("hook_sae_acts_post", add)]),  # type: ignore[operator]
        splice(model, layer, use_error_term=True),
    ):
        yield


def prompt_tokens(model: HookedRootModule, prompt: str) -> Tensor:
    return model.to_tokens(prompt)  # type: ignore[attr-defined]


@torch.no_grad()
def generate(
    model: HookedRootModule,
    layer: nn.Module,
    code: int,
    strength: float,
    prompt: str = PAPER_PROMPT,
    n_samples: int = 10,
    max_new_tokens: int = 32,
    seed: int = 0,
    temperature: float = 1.0,
) -> Tensor:
    """``[n_samples, prompt + max_new_tokens]`` tokens sampled with the code steered.

    The same seed gives the same samples at strength 0 as the unsteered model; the global
    random state is left as it was.
    """
    tokens = prompt_tokens(model, prompt).repeat(n_samples, 1)
    with torch.random.fork_rng(devices=[]), steering(model, layer, code, strength):
        torch.manual_seed(seed)
        out = model.generate(  # type: ignore[operator]
            tokens,
            max_new_tokens=max_new_tokens,
            stop_at_eos=False,
            do_sample=True,
            temperature=temperature,
            verbose=False,
        )
    return out.clone()  # an ordinary tensor: generate's are inference-mode tensors


@dataclass
class SteeringResult:
    code: int
    strength: float
    promoted_logprob: float
    promoted_fraction: float
    fluency_ce: float
    judge_score: float | None
    code_scale: float
    """Mean value of the code where it fires on the reference tokens."""
    promoted: list[str]
    generations: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def code_scale(model: HookedRootModule, layer: nn.Module, code: int, tokens: Tensor) -> float:
    """The code's mean value over the positions where it is non-zero (0 if it never fires)."""
    values = LayerCodes(layer).codes(model, tokens)[..., code][keep_mask(model, tokens)]
    active = values[values != 0]
    return float(active.mean()) if active.numel() else 0.0


@torch.no_grad()
def promoted_token_ids(
    model: HookedRootModule,
    layer: nn.Module,
    code: int,
    reference_tokens: Tensor,
    n_promoted: int = 10,
) -> list[int]:
    """The tokens the code's output direction promotes most (read at z̄ for an MxD)."""
    hidden = mean_hidden(model, layer, reference_tokens) if is_mxd(layer) else None
    logits = logit_direction(model, output_direction(layer, code, hidden))
    return logits.topk(n_promoted).indices.tolist()


@torch.no_grad()
def score_generations(
    model: HookedRootModule,
    layer: nn.Module,
    code: int,
    strength: float,
    tokens: Tensor,
    n_prompt: int,
    promoted: Sequence[int],
) -> tuple[float, float, float]:
    """``(promoted_logprob, promoted_fraction, fluency_ce)`` of generated ``tokens``."""
    generated = tokens[:, n_prompt:]
    with steering(model, layer, code, strength):
        steered = F.log_softmax(model(tokens)[:, n_prompt - 1 : -1].float(), dim=-1)  # type: ignore[operator]
    clean = F.log_softmax(model(tokens)[:, n_prompt - 1 : -1].float(), dim=-1)  # type: ignore[operator]
    ids = torch.tensor(list(promoted), device=tokens.device)
    promoted_logprob = steered[..., ids].mean()
    fraction = torch.isin(generated, ids).float().mean()
    fluency = -clean.gather(-1, generated[..., None]).mean()
    return float(promoted_logprob), float(fraction), float(fluency)


def evaluate_steering(
    model: HookedRootModule,
    layer: nn.Module,
    code: int,
    strengths: Sequence[float] = (0.0, PAPER_STRENGTH),
    prompt: str = PAPER_PROMPT,
    n_samples: int = 10,
    max_new_tokens: int = 32,
    reference_tokens: Tensor | None = None,
    n_promoted: int = 10,
    judge: Judge | None = None,
    seed: int = 0,
    temperature: float = 1.0,
) -> list[SteeringResult]:
    """Generate and score at each strength, from the same seed.

    ``reference_tokens`` (``[batch, pos]``) give an MxD expert its mean hidden units z̄ and the
    code's typical value; by default the prompt's own tokens, a rough estimate.
    """
    check_code(layer, code)
    reference = prompt_tokens(model, prompt) if reference_tokens is None else reference_tokens
    promoted = promoted_token_ids(model, layer, code, reference, n_promoted)
    scale = code_scale(model, layer, code, reference)
    n_prompt = prompt_tokens(model, prompt).shape[1]
    names = [model.to_string(torch.tensor([i])) for i in promoted]  # type: ignore[attr-defined]
    results = []
    for strength in strengths:
        tokens = generate(
            model, layer, code, strength, prompt, n_samples, max_new_tokens, seed, temperature
        )
        texts = [model.to_string(row) for row in tokens[:, n_prompt:]]  # type: ignore[attr-defined]
        logprob, fraction, fluency = score_generations(
            model, layer, code, strength, tokens, n_prompt, promoted
        )
        results.append(
            SteeringResult(
                code=code,
                strength=float(strength),
                promoted_logprob=logprob,
                promoted_fraction=fraction,
                fluency_ce=fluency,
                judge_score=None if judge is None else float(judge(prompt, texts)),
                code_scale=scale,
                promoted=names,
                generations=texts,
            )
        )
    return results


def format_results(results: Sequence[SteeringResult]) -> str:
    """A fixed-width table of the scores, one row per strength."""
    header = (
        f"{'strength':>9}  {'promoted logp':>13}  {'promoted %':>10}  {'fluency CE':>10}  judge"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        judge = "-" if r.judge_score is None else f"{r.judge_score:.3f}"
        lines.append(
            f"{r.strength:>9.2f}  {r.promoted_logprob:>13.3f}  {100 * r.promoted_fraction:>10.1f}"
            f"  {r.fluency_ce:>10.3f}  {judge}"
        )
    return "\n".join(lines)
