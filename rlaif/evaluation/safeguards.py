"""Safeguards: recipe rules checked after each round's evaluation, and the run's result.

A loop that trains on its own judgements can drift into model collapse (Shumailov et al. 2024):
answers grow longer and more alike, the judge rewards its own quirks. The ``safeguards`` section
names rules over the round's held-out evaluation (:mod:`rlaif.evaluation.evaluate`), each against the frozen
base or the round before:

- ``min_win_rate_vs_previous``: the round must win at least this share of head-to-heads against the
  round before it;
- ``max_diversity_drop``: distinct-2 may fall at most this fraction below the base's;
- ``max_length_drift``: the mean response length may move at most this fraction from the base's;
- ``max_instruction_drop``: the share of instruction constraints met may fall at most this much;
- ``max_kl``: the KL-to-base estimate may not exceed this.

When a round breaks a rule the run stops, says why, and writes ``RUN/result.json`` naming the
result: the newest round that kept every rule (the base when round 1 already broke one). Nothing is
deleted; the failed round stays in its folder for inspection. We pick the newest healthy round
rather than the one with the best win-rate because a 32-prompt win-rate has a 95% interval of about
±0.17: differences between healthy rounds are mostly noise.
"""

import math

from rlaif.config import SafeguardsConfig
from rlaif.rundir import RunDir, check_adapter, read_json, write_json


def broken_rules(cfg: SafeguardsConfig, model: dict, base: dict) -> list[str]:
    """The rules a round's evaluation row breaks, each as a sentence with the numbers."""
    out = []

    def bad(x) -> bool:
        return x is None or (isinstance(x, float) and math.isnan(x))

    if cfg.min_win_rate_vs_previous is not None and not bad(model.get("win_rate_vs_previous")):
        rate = model["win_rate_vs_previous"]
        if rate < cfg.min_win_rate_vs_previous:
            out.append(f"win-rate vs {model.get('previous', 'the previous round')} {rate:.2f} "
                       f"< safeguards.min_win_rate_vs_previous {cfg.min_win_rate_vs_previous}")
    if cfg.max_diversity_drop is not None and not bad(base.get("distinct_2")) and base["distinct_2"] > 0:
        d = model.get("distinct_2")
        drop = 1.0 if bad(d) else 1 - d / base["distinct_2"]
        if drop > cfg.max_diversity_drop:
            out.append(f"distinct-2 {d if not bad(d) else float('nan'):.3f} is {drop:.0%} below the base's "
                       f"{base['distinct_2']:.3f} (safeguards.max_diversity_drop {cfg.max_diversity_drop:.0%})")
    if cfg.max_length_drift is not None and base.get("mean_tokens"):
        drift = model["mean_tokens"] / base["mean_tokens"] - 1
        if abs(drift) > cfg.max_length_drift:
            out.append(f"mean length {model['mean_tokens']:.1f} tokens is {drift:+.0%} from the base's "
                       f"{base['mean_tokens']:.1f} (safeguards.max_length_drift {cfg.max_length_drift:.0%})")
    if cfg.max_instruction_drop is not None and not bad(base.get("if_constraint_accuracy")):
        drop = base["if_constraint_accuracy"] - model["if_constraint_accuracy"]
        if drop > cfg.max_instruction_drop:
            out.append(f"instruction constraints met {model['if_constraint_accuracy']:.2f} vs the base's "
                       f"{base['if_constraint_accuracy']:.2f} (safeguards.max_instruction_drop {cfg.max_instruction_drop})")
    if cfg.max_kl is not None and not bad(model.get("kl_to_base")) and model["kl_to_base"] > cfg.max_kl:
        out.append(f"KL to base {model['kl_to_base']:.3f} > safeguards.max_kl {cfg.max_kl}")
    return out


def round_verdict(cfg: SafeguardsConfig, run: RunDir, n: int) -> list[str] | None:
    """Broken rules of round n (empty: healthy), or None when the round has no evaluation."""
    path = run.path(n, "eval.json")
    if not path.is_file():
        return None
    ev = read_json(path)
    return broken_rules(cfg, ev["model"], ev["base"])


def write_result(run: RunDir, rounds_completed: int, stopped_at: int | None, reasons: list[str],
                 healthy: int | None) -> dict:
    """``RUN/result.json``: whether the run completed or stopped, why, and which adapter is the result."""
    best = healthy if stopped_at is not None else rounds_completed
    if best is None:
        best = 0
    adapter = run.adapter(best) if best and run.adapter(best).exists() else None
    if adapter is not None:  # never name an adapter that cannot be loaded, or not the one that was trained
        check_adapter(adapter)
        run.verify(best, ["adapter"])
    result = {
        "status": "stopped" if stopped_at is not None else "completed",
        "reason": "; ".join(reasons) if reasons else None,
        "stopped_after_round": stopped_at,
        "best_round": best,
        "adapter": str(adapter.relative_to(run.root)) if adapter is not None else None,
        "rounds_completed": rounds_completed,
        # rounds that trained nothing (no preference pairs survived): the run goes on, each round draws new
        # prompts; such a round's policy is the one it started from
        "rounds_without_pairs": [r for r in range(1, rounds_completed + 1)
                                 if run.metrics(r).get("train", {}).get("skipped") == "no pairs"],
    }
    write_json(run.root / "result.json", result)
    return result
