import json
from collections import Counter

import pytest
from conftest import SHARED_DATA

from rlaif.config import PromptsConfig
from rlaif.errors import RlaifError
from rlaif.models import load_tokenizer
from rlaif.stages.prompts import load_pool, normalise, select_round

SELF_INSTRUCT = SHARED_DATA / "self_instruct_seed_tasks.jsonl"


def test_bundled_set_is_large_varied_and_has_a_heldout_split():
    pool = load_pool(PromptsConfig())
    assert pool.counts["train"] + pool.counts["heldout"] >= 300
    assert pool.counts["heldout"] >= 30
    assert pool.counts["duplicates"] == 0
    from importlib import resources

    rows = [json.loads(x) for x in resources.files("rlaif.data").joinpath("prompts.jsonl").read_text().splitlines()]
    cats = Counter(r["category"] for r in rows)
    assert len(cats) >= 10 and min(cats.values()) >= 20
    held = {r["id"] for r in rows if r["split"] == "heldout"}
    assert held == {p["id"] for p in pool.heldout}
    assert not held & {p["id"] for p in pool.train}


def test_rounds_never_draw_heldout_and_do_not_repeat_until_exhausted(tiny_model):
    tok = load_tokenizer(tiny_model)
    pool = load_pool(PromptsConfig())
    held = {p["id"] for p in pool.heldout}
    seen = []
    for n in (1, 2, 3):
        chosen, counts = select_round(pool, tok, n, 20, 10_000, seed=0)
        assert len(chosen) == 20 and counts["selected"] == 20
        seen += [p["id"] for p in chosen]
    assert not set(seen) & held
    assert len(set(seen)) == len(seen)
    again, _ = select_round(pool, tok, 2, 20, 10_000, seed=0)
    assert [p["id"] for p in again] == seen[20:40]  # deterministic: a redone stage draws the same prompts


def test_too_long_prompts_are_skipped_and_counted(tiny_model):
    tok = load_tokenizer(tiny_model)
    pool = load_pool(PromptsConfig())
    chosen, counts = select_round(pool, tok, 1, 1000, 40, seed=0)
    assert counts["too_long"] > 0
    assert len(chosen) == pool.counts["train"] - counts["too_long"]
    with pytest.raises(RlaifError, match="longer than prompts.max_prompt_tokens=3"):
        select_round(pool, tok, 1, 10, 3, seed=0)


def test_jsonl_file_with_dedupe_and_input_column(tmp_path):
    rows = [
        {"q": "Translate to French", "ctx": {"text": "good morning"}},
        {"q": "  translate   to FRENCH ", "ctx": {"text": "good morning"}},  # duplicate once folded
        {"q": "", "ctx": {"text": ""}},
        {"q": "Name a colour", "ctx": {"text": ""}},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    pool = load_pool(PromptsConfig(source="file", path=str(path), column="q", input_column="ctx.text"))
    texts = [p["prompt"] for p in pool.train]
    assert texts == ["Translate to French\n\ngood morning", "Name a colour"]
    assert pool.counts["duplicates"] == 1 and pool.counts["empty"] == 1


def test_csv_and_parquet(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"text": [f"Question number {i}?" for i in range(40)]})
    df.to_csv(tmp_path / "p.csv", index=False)
    df.to_parquet(tmp_path / "p.parquet")
    for name in ("p.csv", "p.parquet"):
        pool = load_pool(PromptsConfig(source="file", path=str(tmp_path / name), column="text", heldout_fraction=0.25))
        assert pool.counts["train"] + pool.counts["heldout"] == 40
        assert 3 <= pool.counts["heldout"] <= 20  # hash split, stable across formats
    a = load_pool(PromptsConfig(source="file", path=str(tmp_path / "p.csv"), column="text", heldout_fraction=0.25))
    b = load_pool(PromptsConfig(source="file", path=str(tmp_path / "p.parquet"), column="text", heldout_fraction=0.25))
    assert a.heldout == b.heldout


def test_bad_prompt_sources(tmp_path):
    with pytest.raises(RlaifError, match="prompt file not found"):
        load_pool(PromptsConfig(source="file", path=str(tmp_path / "nope.jsonl")))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(RlaifError, match="the prompt set is empty"):
        load_pool(PromptsConfig(source="file", path=str(tmp_path / "empty.jsonl")))
    (tmp_path / "blank.jsonl").write_text('{"prompt": ""}\n{"prompt": "   "}\n')
    with pytest.raises(RlaifError, match="no usable training prompts"):
        load_pool(PromptsConfig(source="file", path=str(tmp_path / "blank.jsonl")))
    (tmp_path / "cols.jsonl").write_text('{"instruction": "x"}\n')
    with pytest.raises(RlaifError, match="no column 'prompt' \\(columns: instruction\\)"):
        load_pool(PromptsConfig(source="file", path=str(tmp_path / "cols.jsonl")))
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(RlaifError, match="line 2 is not valid JSON"):
        load_pool(PromptsConfig(source="file", path=str(tmp_path / "bad.jsonl")))
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(RlaifError, match="unsupported prompt file type"):
        load_pool(PromptsConfig(source="file", path=str(tmp_path / "p.txt")))


@pytest.mark.skipif(not SELF_INSTRUCT.is_file(), reason="../shared/data/self_instruct_seed_tasks.jsonl is absent")
def test_self_instruct_seed_tasks_load_with_a_column_mapping():
    cfg = PromptsConfig(source="file", path=str(SELF_INSTRUCT), column="instruction", input_column="instances.0.input",
                        heldout_fraction=0.1)
    pool = load_pool(cfg)
    assert pool.counts["rows"] == 175
    assert pool.counts["train"] + pool.counts["heldout"] + pool.counts["duplicates"] == 175
    rows = [json.loads(x) for x in SELF_INSTRUCT.read_text().splitlines()]
    with_input = next(r for r in rows if r["instances"][0]["input"].strip())
    expected = normalise(f"{with_input['instruction'].strip()}\n\n{with_input['instances'][0]['input'].strip()}")
    assert expected in {normalise(p["prompt"]) for p in pool.train + pool.heldout}


def test_reference_column_is_kept_on_each_prompt(tmp_path):
    rows = [
        {"q": "Name a colour", "out": {"text": " Blue. "}},
        {"q": "Name a fruit", "out": {"text": ""}},  # empty: no reference
        {"q": "Name a tree"},  # absent: no reference
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    pool = load_pool(PromptsConfig(source="file", path=str(path), column="q", reference_column="out.text"))
    assert [p.get("reference") for p in pool.train] == ["Blue.", None, None]
    assert pool.counts["no_reference"] == 2
    assert "reference" not in load_pool(PromptsConfig(source="file", path=str(path), column="q")).train[0]
    with pytest.raises(RlaifError, match="no row has the reference column 'answer' \\(columns: q, out\\)"):
        load_pool(PromptsConfig(source="file", path=str(path), column="q", reference_column="answer"))


# ---------------------------------------------------------------- malformed files: one line naming the file and row


def file_pool(path, **kw):
    return load_pool(PromptsConfig(source="file", path=str(path), heldout_fraction=0.0, **kw))


def one_line_error(path, match):
    with pytest.raises(RlaifError, match=match) as info:
        file_pool(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_csv_row_with_an_extra_field_is_refused(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,note\nName a colour,x\nName a fruit, red, sweet\n")
    one_line_error(tmp_path / "p.csv", "line 3 has 3 fields but the header has 2; quote fields that contain a comma")
    (tmp_path / "p.tsv").write_text("prompt\tnote\nName a colour\tx\ty\n")
    one_line_error(tmp_path / "p.tsv", "line 2 has 3 fields but the header has 2; quote fields that contain a tab")


def test_csv_field_over_the_csv_module_limit_loads(tmp_path):
    import csv

    long = "Summarise this: " + "word " * 40_000  # 200,016 characters, over csv's default 131,072
    (tmp_path / "p.csv").write_text(f'prompt\n"{long}"\nName a fruit\n')
    limit = csv.field_size_limit()
    pool = file_pool(tmp_path / "p.csv")
    assert [p["prompt"] for p in pool.train] == [long.strip(), "Name a fruit"]
    assert csv.field_size_limit() == limit, "the process-wide csv limit is restored"


def test_a_file_that_is_not_parquet(tmp_path):
    (tmp_path / "p.parquet").write_text("prompt\nName a colour\n")
    one_line_error(tmp_path / "p.parquet", "not a readable parquet file")


def test_lone_surrogate_in_jsonl_is_refused(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "Name a colour"}\n{"prompt": "bad \\ud800 text"}\n')
    one_line_error(tmp_path / "p.jsonl", r"line 2 holds a lone surrogate escape \(e.g. \\ud800\)")
    (tmp_path / "pair.jsonl").write_text('{"prompt": "a smile \\ud83d\\ude00"}\n')  # a surrogate pair is text
    assert [p["prompt"] for p in file_pool(tmp_path / "pair.jsonl").train] == ["a smile \U0001f600"]


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    bom = "\ufeff"
    (tmp_path / "p.jsonl").write_text(bom + '{"prompt": "Name a colour"}\n{"prompt": "Name a fruit"}\n', encoding="utf-8")
    (tmp_path / "p.csv").write_text(bom + "prompt\nName a colour\nName a fruit\n", encoding="utf-8")
    (tmp_path / "p.json").write_text(bom + '[{"prompt": "Name a colour"}, {"prompt": "Name a fruit"}]', encoding="utf-8")
    for name in ("p.jsonl", "p.csv", "p.json"):
        assert (tmp_path / name).read_bytes().startswith(b"\xef\xbb\xbf")
        assert [p["prompt"] for p in file_pool(tmp_path / name).train] == ["Name a colour", "Name a fruit"], name


def test_rows_that_are_not_objects_and_prompts_that_are_not_text(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"prompt": "Name a colour"}\n\n"Name a fruit"\n')
    one_line_error(tmp_path / "rows.jsonl", "line 3 is not an object \\(got str: \"Name a fruit\"\\); every row must be an object with a 'prompt' field")
    (tmp_path / "rows.json").write_text('[{"prompt": "Name a colour"}, ["Name a fruit"]]')
    one_line_error(tmp_path / "rows.json", r'row 2 is not an object \(got list: \["Name a fruit"\]\)')
    (tmp_path / "num.jsonl").write_text('{"prompt": "Name a colour"}\n{"prompt": 42}\n')
    one_line_error(tmp_path / "num.jsonl", r"line 2: 'prompt' is not text \(got int: 42\)")
    (tmp_path / "ref.jsonl").write_text('{"prompt": "Name a colour", "ans": {"x": 1}}\n')
    with pytest.raises(RlaifError, match=r"line 1: 'ans' is not text \(got dict: \{\"x\": 1\}\)"):
        file_pool(tmp_path / "ref.jsonl", reference_column="ans")
    # a missing or null value is still an empty prompt, counted
    (tmp_path / "null.jsonl").write_text('{"prompt": "Name a colour"}\n{"prompt": null}\n{"other": "x"}\n')
    assert file_pool(tmp_path / "null.jsonl").counts["empty"] == 2
