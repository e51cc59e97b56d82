"""The one number formatter for tables and log lines (report tables, ``rlaif eval``'s table, the loop's
round summary), and ``rlaif eval``'s plain-text table. Standard library only, so the loop and the evaluation
can use it without pandas or matplotlib.
"""

import math
import numbers

MISSING = "–"


def fmt(x, spec: str = ".2f") -> str:
    """``x`` formatted with ``spec``; None and NaN as ``–``, booleans as yes/no, anything else as ``str(x)``."""
    if type(x).__name__ in ("bool", "bool_"):  # numpy's bool (numpy.bool, numpy.bool_ before 2.0) is not a bool
        return "yes" if x else "no"
    if x is None or (isinstance(x, numbers.Real) and math.isnan(x)):
        return MISSING
    return format(x, spec) if isinstance(x, numbers.Number) else str(x)


def format_table(results: dict) -> str:
    """The results as a plain-text table, one row per model."""

    def ci(row, key):
        if row.get(key) is None:
            return MISSING
        lo, hi = row[f"{key}_ci"]
        return f"{fmt(row[key])} [{fmt(lo)}, {fmt(hi)}]"

    j = results["judge"]
    acc = f"judge acc {fmt(j.get('accuracy'))}"  # how far a win-rate can be trusted: the judge's own accuracy
    head = ["model", f"win vs base [95% CI] ({acc})", f"win vs prev [95% CI] ({acc})", "IF prompts", "IF constraints",
            "IF gain vs base [paired 95% CI]", "distinct-2", "self-sim", "tokens (sd)", "truncated", "KL"]
    lines = [head]
    for r in results["models"]:
        lines.append([r["name"], ci(r, "win_rate_vs_base"), ci(r, "win_rate_vs_previous"),
                      fmt(r["if_prompt_accuracy"]), fmt(r["if_constraint_accuracy"]),
                      ci(r, "if_constraint_gain_vs_base"), fmt(r["distinct_2"]),
                      fmt(r["self_similarity"]), f"{fmt(r['mean_tokens'], '.1f')} ({fmt(r['std_tokens'], '.1f')})",
                      fmt(r["truncated_share"]), fmt(r["kl_to_base"], ".3f")])
    widths = [max(len(row[c]) for row in lines) for c in range(len(head))]
    text = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    text.append(f"{results['heldout_prompts']} held-out prompts x{results['samples']} samples, "
                f"{results['instruction_prompts']} instruction prompts x{results.get('instruction_samples', 1)}, judge: {j['model']} ({j['mode']}"
                + (", both orders" if j["mode"] == "pairwise" else "") + "), "
                f"accuracy {fmt(j.get('accuracy'))} on {j.get('pairs', MISSING)} labelled pairs ({j.get('set', MISSING)}); "
                "a frozen base judge may also favour the base's own style of answer")
    return "\n".join(text)
