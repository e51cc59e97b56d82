"""How good, and how cheap, is each judge mode? Accuracy on a labelled judge set, and verdicts per second.

    python benchmarks/judge_bench.py --threads 1           # bundled model, every mode, ~20 min on 2 quiet CPU cores
    python benchmarks/judge_bench.py --limit 28 --modes pairwise,pointwise --out bench.json

``rlaif/data/judge_set.jsonl`` holds pairs written for this project where one answer is unambiguously
better (categories: fact, arithmetic, on_topic, constraint, safety, complete, concise). Pairs are
taken round-robin over categories, so any ``--limit`` is balanced.

Cost is reported in CPU-seconds per verdict (this process's CPU time, all threads), which another
process on a shared machine disturbs far less than wall-clock time; verdicts/s is wall-clock.

Modes: ``pairwise`` and ``pointwise`` are the judge as the loop runs it: one judge object per mode,
called once per chunk of pairs, with the shared prefix computed once per call and the head (system +
constitution) kept between calls while the weights do not change (a GRPO/RLOO reward calls its judge
once per group, evaluation once per batch of head-to-heads). ``-percall`` builds a new judge for each
call, so the head is recomputed every call; ``-nocache`` computes every view in full; ``-bf16`` runs in
bfloat16; ``-critique`` writes a short critique first.

A *verdict* is one pair judged: pairwise = both orders (two forward passes), pointwise = both answers
scored (two forward passes), text baseline = both answers scored by generating text (two generations).
Accuracy is the share of pairs where the judge prefers the better answer (pairwise: both orders
averaged; pointwise and baseline: the higher score); ties count as half.

The text baseline is the judge most self-rewarding code uses (Yuan et al. 2024's LLM-as-a-judge
prompt): the same rubric, but the model writes a short justification and ``Score: N``, greedy, and a
regex reads N. An answer whose score cannot be parsed has no score; a pair with a missing score counts
as a tie (half right). It runs at each ``--baseline-tokens`` budget (a longer budget parses more often
and costs more); the cost ratios compare against the most accurate budget. It gets the same batch size
and HF ``generate``'s key/value cache, but no shared-prefix cache: as in the code it stands for. The
expensive modes (bf16, baseline) run on the first ``--baseline-limit`` pairs, critique on
``--critique-limit``; every mode also reports its accuracy on the baseline's subset, so they compare on
the same pairs.
"""

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

from rlaif import chat
from rlaif.config import JudgeConfig
from rlaif.judging.constitution import load_constitution
from rlaif.judging.judges import ModelJudge, PointwiseJudge, greedy_generate
from rlaif.judging.reliability import length_preference, pearson
from rlaif.judging.verdicts import Comparison, pick_principle, sigmoid
from rlaif.models import load_model, load_tokenizer, model_kwargs, resolve_model

HERE = Path(__file__).resolve().parent
ALL_MODES = (
    "pairwise", "pairwise-percall", "pairwise-nocache", "pointwise", "pointwise-percall", "pointwise-nocache",
    "pairwise-bf16", "pointwise-bf16", "pairwise-critique", "pointwise-critique", "text-baseline",
)
EXPENSIVE = ("bf16", "baseline")
SCORE_RE = re.compile(r"score\s*[:=]?\s*\**\s*([0-5])\b", re.IGNORECASE)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="bundled", help="model source (bundled, folder or hub id)")
    p.add_argument("--set", dest="judge_set", default=str(HERE.parent / "rlaif" / "data" / "judge_set.jsonl"), help="labelled pairs (JSONL)")
    p.add_argument("--constitution", default="default")
    p.add_argument("--modes", default=",".join(ALL_MODES), help=f"comma-separated, from: {', '.join(ALL_MODES)}")
    p.add_argument("--limit", type=int, default=0, help="pairs for the cheap modes (0 = all 126)")
    p.add_argument("--baseline-limit", type=int, default=42, help="pairs for bf16 and the text baseline")
    p.add_argument("--critique-limit", type=int, default=7, help="pairs for the critique modes")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chunk", type=int, default=14, help="pairs per judge call; modes take turns chunk by chunk")
    p.add_argument("--baseline-tokens", default="64,128",
                   help="max new tokens of the text baseline; several (comma-separated) run one baseline each")
    p.add_argument("--critique-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0, help="principle sampling seed (pairwise)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p


def load_pairs(path: str) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    by_cat: dict[str, list[dict]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r)
    out = []
    for k in range(max(len(v) for v in by_cat.values())):  # round-robin over categories
        out += [v[k] for v in by_cat.values() if k < len(v)]
    return out


def pairwise_run(judge: ModelJudge, pairs: list[dict], const, seed: int) -> list[dict]:
    comps = []
    for r in pairs:
        _, principle = pick_principle(const, "sample", seed, r["id"], 0, 1)
        comps.append(Comparison(r["prompt"], r["better"], r["worse"], principle))
        comps.append(Comparison(r["prompt"], r["worse"], r["better"], principle))
    lo = judge(comps)
    out = []
    for k in range(len(pairs)):
        pa_bw, pa_wb = sigmoid(lo[2 * k]), sigmoid(lo[2 * k + 1])
        p_better = (pa_bw + 1 - pa_wb) / 2
        out.append({"p_better": p_better, "agree": (pa_bw > 0.5) == (pa_wb < 0.5), "p_first": (pa_bw + pa_wb) / 2})
    return out


def pointwise_run(judge: PointwiseJudge, pairs: list[dict]) -> list[dict]:
    items = [(r["prompt"], a) for r in pairs for a in (r["better"], r["worse"])]
    scores = judge(items)
    vals = judge.rubric.values
    span = max(vals) - min(vals)
    out = []
    for k in range(len(pairs)):
        sb, sw = scores[2 * k]["score"], scores[2 * k + 1]["score"]
        out.append({"p_better": 0.5 + (sb - sw) / (2 * span), "score_better": sb, "score_worse": sw})
    return out


def baseline_prompt(tokenizer, const, prompt: str, answer: str) -> str:
    """The rubric prompt with the self-rewarding ending: justify briefly, then 'Score: <points>'.

    The rubric's own "Reply with ... score only" line is dropped wherever the template puts it, and
    the baseline's instruction comes last, after the answer, as in Yuan et al. 2024's judge prompt.
    """
    template = "\n".join(line for line in const.pointwise.template.split("\n") if not line.startswith("Reply with"))
    user = template.format(prompt=prompt, answer=answer, examples="").rstrip() + (
        "\n\nBriefly justify your total score in one or two sentences, then conclude with the score "
        "using the format: Score: <total points>"
    )
    messages = ([{"role": "system", "content": const.system}] if const.system else []) + [{"role": "user", "content": user}]
    return chat.render(tokenizer, messages)  # greedy_generate encodes it with rlaif.chat


def parse_score(text: str) -> float | None:
    found = SCORE_RE.findall(text)
    return float(found[-1]) if found else None


def baseline_run(model, tokenizer, const, pairs: list[dict], batch_size: int, max_new_tokens: int) -> list[dict]:
    texts = [baseline_prompt(tokenizer, const, r["prompt"], a) for r in pairs for a in (r["better"], r["worse"])]
    gens = greedy_generate(model, tokenizer, texts, max_new_tokens, batch_size)
    out = []
    for k in range(len(pairs)):
        sb, sw = parse_score(gens[2 * k]), parse_score(gens[2 * k + 1])
        failed = (sb is None) + (sw is None)
        p = 0.5 if failed else (1.0 if sb > sw else 0.0 if sb < sw else 0.5)
        out.append({"p_better": p, "score_better": sb, "score_worse": sw, "parse_failures": failed,
                    "text_better": gens[2 * k], "text_worse": gens[2 * k + 1]})
    return out


def accuracy(rows: list[dict]) -> float:
    return sum(1.0 if r["p_better"] > 0.5 else 0.5 if r["p_better"] == 0.5 else 0.0 for r in rows) / len(rows)


def summarize(mode: str, rows: list[dict], pairs: list[dict], seconds: float, n_sub: int, ntok) -> dict:
    ok = [r for r in rows if not math.isnan(r["p_better"])]
    fake = [{"prompt_id": p["id"], "i": 0, "j": 1, "p_i": r["p_better"]} for p, r in zip(pairs, rows)]
    lengths = {(p["id"], 0): ntok(p["better"]) for p in pairs} | {(p["id"], 1): ntok(p["worse"]) for p in pairs}
    res = {
        "mode": mode,
        "pairs": len(rows),
        "accuracy": accuracy(ok) if ok else math.nan,
        "accuracy_subset": accuracy(rows[:n_sub]),
        "subset_pairs": min(n_sub, len(rows)),
        "failed": len(rows) - len(ok),
        "seconds": seconds,
        "verdicts_per_s": len(rows) / seconds,
        "s_per_verdict": seconds / len(rows),
        **length_preference(fake, lengths),
        "by_category": {},
    }
    if "agree" in rows[0]:
        res["order_agreement"] = sum(r["agree"] for r in rows) / len(rows)
        res["position_bias_p_first"] = sum(r["p_first"] for r in rows) / len(rows)
    if "parse_failures" in rows[0]:
        res["parse_failure_rate"] = sum(r["parse_failures"] for r in rows) / (2 * len(rows))
        res["accuracy_strict"] = sum(r["p_better"] > 0.5 and not r["parse_failures"] for r in rows) / len(rows)
    if "score_better" in rows[0] and "parse_failures" not in rows[0]:
        xs = [r["score_better"] for r in rows] + [r["score_worse"] for r in rows]
        res["score_spread"] = pearson(xs, [1.0] * len(rows) + [0.0] * len(rows))  # point-biserial
    for cat in sorted({p["category"] for p in pairs}):
        sub = [r for p, r in zip(pairs, rows) if p["category"] == cat]
        res["by_category"][cat] = accuracy(sub)
    return res


def run_mode(mode: str, ctx: dict, pairs: list[dict], args) -> list[dict]:
    """One judge call on ``pairs``. A mode keeps one judge object across its calls, as a round's judge
    does, so its prefix store carries the shared head from call to call; ``-percall`` modes build a
    new judge each call, so the head is recomputed every time."""
    const, tok = ctx["const"], ctx["tok"]
    model = ctx["bf16"] if mode.endswith("bf16") else ctx["fp32"]
    if mode.startswith("text-baseline"):
        return baseline_run(model, tok, const, pairs, args.batch_size, int(mode.rsplit("-", 1)[1]))
    judge = ctx["judges"].get(mode)
    if judge is None:
        cls = ModelJudge if mode.startswith("pairwise") else PointwiseJudge
        judge = cls(model, tok, const, args.batch_size, prefix_cache=not mode.endswith("nocache"),
                    critique=mode.endswith("critique"), critique_tokens=args.critique_tokens)
        if not mode.endswith("percall"):
            ctx["judges"][mode] = judge
    if mode.startswith("pairwise"):
        return pairwise_run(judge, pairs, const, args.seed)
    return pointwise_run(judge, pairs)


def fmt(x, spec=".2f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(results: list[dict]) -> str:
    head = ["mode", "pairs", "acc", "acc@sub", "agree", "P(first)", "len corr", "parse fail", "verdicts/s", "CPU-s/verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        lines.append("| " + " | ".join([
            r["mode"], str(r["pairs"]), fmt(r["accuracy"]), fmt(r["accuracy_subset"]), fmt(r.get("order_agreement")),
            fmt(r.get("position_bias_p_first")), fmt(r["length_corr"]), fmt(r.get("parse_failure_rate")),
            fmt(r["verdicts_per_s"], ".3f"), fmt(r["cpu_s_per_verdict"], ".2f"),
        ]) + " |")
    return "\n".join(lines)


def best_baseline(results: list[dict]) -> dict | None:
    """The text baseline to compare against: the most accurate budget, the cheapest among equals."""
    bases = [r for r in results if r["mode"].startswith("text-baseline")]
    return min(bases, key=lambda r: (-r["accuracy_subset"], r["cpu_s_per_verdict"])) if bases else None


def ratios(results: list[dict], default_mode: str) -> list[str]:
    """Cost ratios in CPU-seconds per verdict (robust to other processes on a shared machine)."""
    by = {r["mode"]: r for r in results}
    out = []
    best = best_baseline(results)
    for base in [r for r in results if r["mode"].startswith("text-baseline")]:
        out.append(
            f"`{base['mode']}` ({base['mode'].rsplit('-', 1)[1]} new tokens): accuracy {base['accuracy_subset']:.2f} on "
            f"{base['pairs']} pairs, {base['parse_failure_rate']:.0%} of answers unparsable (scored as ties; "
            f"{base['accuracy_strict']:.2f} if they count as wrong), {base['cpu_s_per_verdict']:.2f} CPU-s per verdict"
            + (" (the most accurate budget: the ratios below use it)" if base is best else "")
        )
    for m in ("pairwise", "pointwise"):
        if best and m in by:
            d = by[m]
            out.append(
                f"{'default' if m == default_mode else 'other'} mode `{m}` vs `{best['mode']}`: "
                f"{best['cpu_s_per_verdict'] / d['cpu_s_per_verdict']:.1f}x cheaper per verdict (CPU-s; wall-clock "
                f"{best['s_per_verdict'] / d['s_per_verdict']:.1f}x; on the same {best['pairs']} pairs alone "
                f"{best['cpu_s_per_verdict'] / d['cpu_s_per_verdict_subset']:.1f}x); accuracy {d['accuracy_subset']:.2f} vs "
                f"{best['accuracy_subset']:.2f} on the same {best['pairs']} pairs"
                + (f" ({d['accuracy']:.2f} on all {d['pairs']})" if d["pairs"] > best["pairs"] else "")
            )
    for m in ("pairwise", "pointwise"):
        if m in by and f"{m}-percall" in by:
            a, b = by[m], by[f"{m}-percall"]
            out.append(f"prefix store across calls, {m}: {b['cpu_s_per_verdict'] / a['cpu_s_per_verdict']:.2f}x less CPU "
                       f"per verdict than recomputing the head every call ({b['cpu_s_per_verdict']:.2f} -> "
                       f"{a['cpu_s_per_verdict']:.2f} CPU-s; wall-clock {b['s_per_verdict'] / a['s_per_verdict']:.2f}x), "
                       f"same accuracy {a['accuracy']:.2f}")
        if m in by and f"{m}-nocache" in by:
            a, b = by[m], by[f"{m}-nocache"]
            out.append(f"prefix cache, {m}: {b['cpu_s_per_verdict'] / a['cpu_s_per_verdict']:.2f}x less CPU per verdict "
                       f"({b['cpu_s_per_verdict']:.2f} -> {a['cpu_s_per_verdict']:.2f} CPU-s; wall-clock "
                       f"{b['s_per_verdict'] / a['s_per_verdict']:.2f}x), same accuracy {a['accuracy']:.2f}")
        if m in by and f"{m}-bf16" in by:
            a, b = by[m], by[f"{m}-bf16"]
            out.append(f"bf16, {m}: {b['cpu_s_per_verdict'] / a['cpu_s_per_verdict']:.2f}x the fp32 CPU cost, accuracy "
                       f"{b['accuracy_subset']:.2f} vs {a['accuracy_subset']:.2f} on the same pairs")
    return out


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ALL_MODES]
    if bad:
        print(f"error: unknown mode(s) {bad}; choose from {', '.join(ALL_MODES)}", file=sys.stderr)
        return 2
    budgets = [int(x) for x in str(args.baseline_tokens).split(",") if x.strip()]
    modes = [x for m in modes for x in ([f"{m}-{n}" for n in budgets] if m == "text-baseline" else [m])]
    pairs = load_pairs(args.judge_set)
    n_all = len(pairs) if args.limit <= 0 else min(args.limit, len(pairs))
    n_sub = min(args.baseline_limit, n_all)
    path = resolve_model(args.model)
    tok = load_tokenizer(path)
    ctx = {"const": load_constitution(args.constitution), "tok": tok, "fp32": load_model(path, model_kwargs("float32")), "judges": {}}
    if any(m.endswith("bf16") for m in modes):
        ctx["bf16"] = load_model(path, model_kwargs("bfloat16"))
    ntok = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
    default_mode = JudgeConfig().mode
    for name in ("fp32", "bf16"):  # warm-up, untimed: the first forward pass pays one-off set-up costs
        if name in ctx:
            pairwise_run(ModelJudge(ctx[name], tok, ctx["const"], args.batch_size), pairs[:2], ctx["const"], args.seed)
            pointwise_run(PointwiseJudge(ctx[name], tok, ctx["const"], args.batch_size), pairs[:2])
    if any(m.startswith("text-baseline") for m in modes):
        baseline_run(ctx["fp32"], tok, ctx["const"], pairs[:1], args.batch_size, 4)
    limit = {m: min(n_sub if any(x in m for x in EXPENSIVE) else n_all, args.critique_limit if "critique" in m else n_all)
             for m in modes}
    rows_of: dict[str, list[dict]] = {m: [] for m in modes}
    secs, cpu, cpu_sub = dict.fromkeys(modes, 0.0), dict.fromkeys(modes, 0.0), dict.fromkeys(modes, 0.0)
    n_in_sub = dict.fromkeys(modes, 0)  # pairs judged in calls that lie wholly within the baseline's pairs
    # modes take turns chunk by chunk, so that load from other processes on a shared machine falls
    # on every mode alike; each chunk is one judge call (see run_mode for what carries over)
    for lo in range(0, n_all, args.chunk):
        for mode in modes:
            hi = min(lo + args.chunk, limit[mode])
            if hi <= lo:
                continue
            print(f"[bench] {mode}: pairs {lo}-{hi - 1} ...", file=sys.stderr, flush=True)
            t0, c0 = time.perf_counter(), time.process_time()
            rows_of[mode] += run_mode(mode, ctx, pairs[lo:hi], args)
            secs[mode] += time.perf_counter() - t0
            spent = time.process_time() - c0
            cpu[mode] += spent
            if hi <= n_sub:
                cpu_sub[mode] += spent
                n_in_sub[mode] += hi - lo
    results = []
    for mode in modes:
        rows = rows_of[mode]
        res = summarize(mode, rows, pairs[: len(rows)], secs[mode], n_sub, ntok)
        res["cpu_s_per_verdict"] = cpu[mode] / len(rows)
        res["cpu_s_per_verdict_subset"] = cpu_sub[mode] / n_in_sub[mode] if n_in_sub[mode] else math.nan
        print(f"[bench] {mode}: accuracy {res['accuracy']:.3f}, {res['verdicts_per_s']:.3f} verdicts/s", file=sys.stderr)
        res["rows"] = rows
        results.append(res)
    print(f"\nJudge benchmark: {Path(args.judge_set).name}, model {args.model}, torch threads {torch.get_num_threads()}, "
          f"default mode `{default_mode}`\n")
    print(table(results))
    print()
    for line in ratios(results, default_mode):
        print("- " + line)
    cats = sorted(results[0]["by_category"]) if results else []
    if cats:
        print("\nAccuracy by category:\n")
        print("| mode | " + " | ".join(cats) + " |\n|" + "---|" * (len(cats) + 1))
        for r in results:
            print(f"| {r['mode']} | " + " | ".join(fmt(r["by_category"].get(c)) for c in cats) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "default_mode": default_mode, "results": results},
                                             indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
