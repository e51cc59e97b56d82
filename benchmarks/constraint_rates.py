"""How often does a model meet each generatable constraint type? The evidence behind ``DEFAULT_TYPES``.

    python benchmarks/constraint_rates.py                         # bundled model, 8 prompts x 2 samples per type
    python benchmarks/constraint_rates.py --prompts 16 --samples 4 --out rates.json

For every type of :mod:`rlaif.stages.constraints` (``MAKERS``), the first ``--prompts`` bundled
training prompts (the ``constraints`` category left out: they already state constraints of their
own) each get exactly one constraint of that type from the generator (seed 0, round 1), and the
model samples ``--samples`` answers per prompt as the loop's generate stage does. Per type it prints
the share of answers that meet the constraint (``pass``) and the share of prompts whose samples
disagree (``mixed``: where the verifier can tell two candidates apart, so the pair carries signal).
A type is worth training on when ``pass`` is neither 0 nor 1 and ``mixed`` is above 0.

All prompts of all types go through one ``generate_candidates`` call (batches of 16) so a small
model is measured at full batch width; about 45 min for the default on 2 busy CPU cores.
"""

import argparse
import json
import random
from importlib import resources

import torch

from rlaif.config import GenerateConfig
from rlaif.evaluation.checks import check
from rlaif.models import load_model, load_tokenizer, resolve_model
from rlaif.stages.constraints import MAKERS, add_constraints
from rlaif.stages.generate import generate_candidates


def training_prompts() -> list[dict]:
    text = resources.files("rlaif.data").joinpath("prompts.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    keep = [{"id": r["id"], "prompt": r["prompt"]} for r in rows
            if r.get("split") != "heldout" and r.get("category") != "constraints"]
    random.Random(0).shuffle(keep)
    return keep


def rates(cands: list[dict], kinds) -> dict:
    out = {}
    for kind in kinds:
        met: dict[str, list[bool]] = {}
        for c in cands:
            if c["prompt_id"].split("|")[0] == kind:
                met.setdefault(c["prompt_id"], []).append(c["met"])
        flat = [m for v in met.values() for m in v]
        out[kind] = {
            "pass": sum(flat) / len(flat),
            "mixed": sum(0 < sum(v) < len(v) for v in met.values()) / len(met),
            "answers": len(flat),
            "truncated": sum(c["truncated"] for c in cands if c["prompt_id"].split("|")[0] == kind) / len(flat),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per type")
    ap.add_argument("--samples", type=int, default=2, help="answers per prompt (K)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the rates as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    path = resolve_model(args.model)
    tokenizer, model = load_tokenizer(path), load_model(path)
    pool, wanted = [], {}
    base = training_prompts()[: args.prompts * 10]
    for kind in sorted(MAKERS):
        cfg = {"share": 1.0, "per_prompt": 1, "types": [kind]}
        for p in [p for p in add_constraints(base, cfg, 0, 1) if p["constraints"]][: args.prompts]:
            pid = f"{kind}|{p['id']}"
            pool.append({"id": pid, "prompt": p["prompt"]})
            wanted[pid] = p["constraints"][0]
    gen = GenerateConfig(num_candidates=args.samples, max_new_tokens=args.max_new_tokens, batch_size=16)
    cands = generate_candidates(model, tokenizer, pool, gen, seed=1)
    for c in cands:
        c["met"] = check(c["text"], wanted[c["prompt_id"]])
    result = rates(cands, sorted(MAKERS))
    print(f"{'type':24s} {'pass':>5s} {'mixed':>6s} {'cut off':>8s}")
    for kind, r in sorted(result.items(), key=lambda kv: -kv[1]["mixed"]):
        print(f"{kind:24s} {r['pass']:5.2f} {r['mixed']:6.2f} {r['truncated']:8.2f}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump({"settings": vars(args), "rates": result}, fh, indent=1)


if __name__ == "__main__":
    main()
