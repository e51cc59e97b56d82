"""The run folder's promises (issue 12): rlaif deletes only what it made, writes only into its own folders,
commits durably, never overwrites superseded outputs, verifies artifacts before trusting them, and loads
weights from safetensors only. Each test plants the fault and checks the exact outcome."""

import datetime
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_recipe, write_recipe
from safetensors.torch import load_file, save_file

from rlaif import rundir
from rlaif.cli import main
from rlaif.config import recipe_from_dict
from rlaif.errors import RlaifError
from rlaif.lora import make_trainer
from rlaif.models import load_adapter_state, load_model
from rlaif.pipeline import REDO_STAGES, later_stages, stages_for
from rlaif.reporting.loaders import run_result
from rlaif.run import RunContext
from rlaif.rundir import TMP_MARK, RunDir, read_json, read_jsonl, sha256_dir, write_json


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, text
    return text


def listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- rlaif deletes only what it made


def test_clean_tmp_removes_only_rlaif_temporaries(tmp_path):
    run = RunDir(tmp_path / "run")
    run.open_for_run()
    (run.root / "notes.tmp-2024").write_text("the user's notes")
    run.round_dir(1).mkdir()
    (run.round_dir(1) / "draft.tmp-1").write_text("also the user's")
    (run.round_dir(1) / f"pairs.jsonl{TMP_MARK}4242").write_text("half a file")
    (run.round_dir(1) / f"adapter{TMP_MARK}train").mkdir()
    (run.round_dir(1) / f"adapter{TMP_MARK}train" / "adapter_model.safetensors").write_bytes(b"x")
    run.clean_tmp()
    assert sorted(p.name for p in run.root.rglob("*")) == [".rlaif-run", "draft.tmp-1", "notes.tmp-2024", "round_001"]
    assert (run.root / "notes.tmp-2024").read_text() == "the user's notes"


def run_in(folder: Path, tiny_model: str, output_dir: str, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.chdir(folder)
    recipe = write_recipe(folder.parent / f"{folder.name}.yaml", tiny_recipe(tiny_model, output_dir, run={"rounds": 1}))
    code = main(["run", str(recipe)])
    return code, capsys.readouterr().err


def test_output_dir_that_is_a_users_folder_is_refused(tiny_model, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.tmp-2024").write_text("keep me")
    (home / "thesis.tex").write_text("keep me too")
    before = listing(home)
    code, err = run_in(home, tiny_model, ".", monkeypatch, capsys)
    assert code == 2, err
    assert "error: run.output_dir . is not empty and is not an rlaif run folder (it holds 'notes.tmp-2024' and 1 more)" in err
    assert len(err.strip().splitlines()) == 1
    assert listing(home) == before and not (home / ".lock").exists()


def test_empty_output_dir_is_an_error_not_the_current_folder(tiny_model, tmp_path, monkeypatch, capsys):
    here = tmp_path / "here"
    here.mkdir()
    code, err = run_in(here, tiny_model, "", monkeypatch, capsys)
    assert code == 2 and err.startswith("error: run.output_dir is empty") and len(err.strip().splitlines()) == 1
    assert list(here.iterdir()) == []
    with pytest.raises(RlaifError, match="run.output_dir is empty"):
        RunDir("  ")


def test_output_dir_that_is_a_file(tiny_model, tmp_path, monkeypatch, capsys):
    (tmp_path / "here").mkdir()
    (tmp_path / "here/out").write_text("a file")
    code, err = run_in(tmp_path / "here", tiny_model, "out", monkeypatch, capsys)
    assert code == 2 and err.strip() == "error: run.output_dir out is a file, not a folder: set run.output_dir to a folder path"
    assert (tmp_path / "here/out").read_text() == "a file"
    with pytest.raises(RlaifError, match="is a file, not a folder; choose another") as info:
        RunDir(tmp_path / "here/out/run").open_for_run()
    one_line(info)


def test_output_dir_that_is_not_writable(tmp_path):
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        target, match = locked / "run", "is not writable"
    else:  # root writes through permission bits: use a kernel folder that refuses new entries
        target, match = Path("/sys/rlaif-test-run"), "is not writable|cannot write to run.output_dir"
        try:
            target.mkdir()
        except OSError:
            pass
        else:
            target.rmdir()
            pytest.skip("no folder here refuses writes to root")
    with pytest.raises(RlaifError, match=match) as info, RunDir(target).lock():
        pass
    one_line(info)
    assert not target.exists()


def test_run_folders_that_are_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    RunDir(tmp_path / "empty").open_for_run()
    (tmp_path / "killed_early").mkdir()
    (tmp_path / "killed_early/.lock").write_text("")  # killed after taking the lock, before any write
    RunDir(tmp_path / "killed_early").open_for_run()
    (tmp_path / "older").mkdir()
    write_json(tmp_path / "older/manifest.json", {"rlaif": "run manifest"})  # a run from before the marker
    (tmp_path / "older/notes.txt").write_text("a user's file inside a run folder stays")
    RunDir(tmp_path / "older").open_for_run()
    RunDir(tmp_path / "new/nested").open_for_run()
    for name in ("empty", "killed_early", "older", "new/nested"):
        assert (tmp_path / name / rundir.RUN_MARKER).is_file(), name
    assert (tmp_path / "older/notes.txt").is_file()


# ---------------------------------------------------------------- commits: durable, never overwritten


def fsync_spy(monkeypatch) -> list[tuple]:
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_atomic_commits_fsync_the_folder_after_the_rename(tmp_path, monkeypatch):
    folder = tmp_path / "round_001"
    folder.mkdir()
    events = fsync_spy(monkeypatch)
    rundir.write_bytes_atomic(folder / "pairs.jsonl", b"{}\n")
    dir_sync = ("fsync", "dir", folder.stat().st_ino)
    assert events[0][:2] == ("fsync", "file") and events[1:] == [("replace", "pairs.jsonl"), dir_sync]

    for target_exists in (False, True):
        events.clear()
        tmp = folder / f"adapter{TMP_MARK}train"
        (tmp / "sub").mkdir(parents=True)
        (tmp / "adapter_model.safetensors").write_bytes(b"weights")
        (tmp / "sub/extra.json").write_text("{}")
        rundir.commit_dir(tmp, folder / "adapter")
        replaced = [i for i, e in enumerate(events) if e == ("replace", "adapter")]
        assert len(replaced) == 1 and events[replaced[0] + 1] == dir_sync, (target_exists, events)
        before = events[: replaced[0]]
        assert [e[1] for e in before if e[0] == "fsync"].count("file") == 2  # both files, before the rename
        assert ("fsync", "dir", (folder / "adapter").stat().st_ino) in before  # the new folder itself
    assert (folder / "adapter/adapter_model.safetensors").read_bytes() == b"weights"
    assert not list(folder.glob(f"*{TMP_MARK}*"))


DPO = recipe_from_dict({"wandb": {"enabled": False}})
STAGE_FILES = {s.name: s.writes for s in stages_for(DPO)}  # the stage table's files of a DPO round


def redo_pairs(run: RunDir) -> Path | None:
    return run.supersede(1, {s.name: s.writes for s in later_stages(DPO, "pairs", include_self=True)})


def planted_round(root: Path, tag: str) -> RunDir:
    """A round with every DPO stage done and small files, without a model."""
    run = RunDir(root)
    run.open_for_run()
    for stage in REDO_STAGES:
        for name in STAGE_FILES[stage]:
            if name == "adapter":
                run.adapter(1).mkdir(parents=True, exist_ok=True)
                save_file({"w": torch.full((2, 2), float(len(tag)))}, str(run.adapter(1) / "adapter_model.safetensors"))
                (run.adapter(1) / "adapter_config.json").write_text("{}")
            else:
                rundir.write_jsonl(run.path(1, name), [{"tag": tag, "i": i} for i in range(3)])
        run.mark_done(1, stage, STAGE_FILES[stage])
    return run


def test_superseded_never_overwrites_two_redos_in_one_second(tmp_path, monkeypatch):
    frozen = datetime.datetime(2026, 11, 27, 10, 0, 0)
    monkeypatch.setattr(rundir, "datetime", SimpleNamespace(datetime=SimpleNamespace(now=lambda: frozen)))
    run = planted_round(tmp_path / "run", "first")
    first = redo_pairs(run)
    for stage in ("pairs", "train"):
        for name in STAGE_FILES[stage][:2]:
            if name != "adapter":
                rundir.write_jsonl(run.path(1, name), [{"tag": "second"}])
        run.mark_done(1, stage, [f for f in STAGE_FILES[stage][:2] if f != "adapter"])
    second = redo_pairs(run)
    assert first.name == "20261127-100000" and second.name == "20261127-100000-2"
    assert [r["tag"] for r in read_jsonl(first / "round_001/pairs.jsonl")] == ["first"] * 3
    assert [r["tag"] for r in read_jsonl(second / "round_001/pairs.jsonl")] == ["second"]
    assert (first / "round_001/adapter/adapter_model.safetensors").is_file()
    assert run.completed(1) == ["prompts", "generate", "judge"]
    assert set(read_json(run.path(1, "state.json"))["files"]) == {"prompts.jsonl", "candidates.jsonl",
                                                                  "verdicts.jsonl", "rankings.jsonl"}


def test_completeness_compares_stage_sets_not_counts(tmp_path):
    run = RunDir(tmp_path / "run")
    for stage in ("prompts", "generate", "judge", "pairs", "evaluate"):  # five stages, but not train
        run.mark_done(1, stage, files=[])
    assert len(run.completed(1)) == len(REDO_STAGES)
    assert not run.is_complete(1, REDO_STAGES)
    run.mark_done(1, "train", files=[])
    assert run.is_complete(1, REDO_STAGES) and run.is_complete(1, ("prompts", "train"))


# ---------------------------------------------------------------- artifacts verified, not trusted (a real run)


@pytest.fixture(scope="module")
def one_round(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    recipe = write_recipe(tmp / "recipe.yaml", tiny_recipe(tiny_model, tmp / "out", run={"rounds": 1}))
    assert main(["run", str(recipe)]) == 0
    return tmp / "out", recipe


def copy_run(src: Path, dst: Path, tiny_model: str) -> Path:
    """A copy of a run folder that `rlaif run` accepts as its own (its manifest names the copy's folder)."""
    shutil.copytree(src, dst)
    manifest = read_json(dst / "manifest.json")
    manifest["recipe"]["run"]["output_dir"] = str(dst)
    manifest["recipe_file"] = str(write_recipe(dst.parent / "copy.yaml", tiny_recipe(tiny_model, dst, run={"rounds": 1})))
    write_json(dst / "manifest.json", manifest)
    return Path(manifest["recipe_file"])


def test_every_committed_artifact_is_recorded_with_digest_and_rows(one_round):
    out, _ = one_round
    state = read_json(out / "round_001/state.json")
    assert state["completed"] == list(REDO_STAGES)
    produced = {name: stage for stage in REDO_STAGES for name in STAGE_FILES[stage]
                if (out / "round_001" / name).exists()}
    assert set(state["files"]) == set(produced) and "adapter" in produced and "completions.jsonl" not in produced
    for name, record in state["files"].items():
        path = out / "round_001" / name
        assert record["stage"] == produced[name]
        if path.is_dir():
            assert record == {"stage": produced[name], "redo": True, "sha256": sha256_dir(path),
                              "rows": len([p for p in path.rglob("*") if p.is_file()])}
        else:
            assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert record["rows"] == len(read_jsonl(path)), name
    assert state["files"]["candidates.jsonl"]["rows"] == 12 and state["files"]["prompts.jsonl"]["rows"] == 4
    RunDir(out).verify(1)
    RunDir(out).verify(1, ["pairs.jsonl", "adapter"])


def redo_line(recipe: Path, stage: str) -> str:
    return f"; redo that stage with: rlaif {stage} {recipe} --round 1"


def test_planted_corruptions_are_named_with_their_fix(one_round, tiny_model, tmp_path):
    src, _ = one_round
    out = tmp_path / "out"
    recipe = copy_run(src, out, tiny_model)
    run, rd = RunDir(out), out / "round_001"
    kept = read_json(rd / "state.json")["files"]["pairs.jsonl"]["rows"]
    assert kept >= 2

    def expect(name: str, message: str):
        with pytest.raises(RlaifError) as info:
            run.verify(1, [name])
        assert one_line(info) == message

    pairs = (rd / "pairs.jsonl").read_bytes()
    (rd / "pairs.jsonl").write_bytes(pairs.splitlines(keepends=True)[0])  # truncated to one pair
    expect("pairs.jsonl", f"{rd / 'pairs.jsonl'} has 1 rows where {kept} were committed" + redo_line(recipe, "pairs"))
    (rd / "pairs.jsonl").unlink()
    expect("pairs.jsonl", f"{rd / 'pairs.jsonl'} is missing" + redo_line(recipe, "pairs"))
    (rd / "pairs.jsonl").write_bytes(pairs)
    run.verify(1, ["pairs.jsonl"])

    lines = (rd / "candidates.jsonl").read_bytes().splitlines(keepends=True)
    (rd / "candidates.jsonl").write_bytes(b"".join(lines[:5] + lines[6:]))  # one candidate line gone
    expect("candidates.jsonl", f"{rd / 'candidates.jsonl'} has 11 rows where 12 were committed"
           + redo_line(recipe, "generate"))
    edited = json.loads(lines[5])
    edited["text"] += " (edited)"
    (rd / "candidates.jsonl").write_bytes(b"".join([*lines[:5], (json.dumps(edited) + "\n").encode(), *lines[6:]]))
    with pytest.raises(RlaifError, match=r"candidates.jsonl changed after it was committed \(sha256 [0-9a-f]{12}, "):
        run.verify(1, ["candidates.jsonl"])

    weights = load_file(rd / "adapter/adapter_model.safetensors")
    save_file({k: v * 2 for k, v in weights.items()}, str(rd / "adapter/adapter_model.safetensors"))  # another adapter
    (rd / "candidates.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(RlaifError, match=r"adapter changed after it was committed .*; redo that stage with: rlaif train "):
        run.verify(1)
    with pytest.raises(RlaifError, match="stage 'evaluate' needs stage 'train' first"):
        RunDir(run.root).require(2, "train", "evaluate")


def test_verify_of_a_state_from_before_digests_checks_only_the_stages(tmp_path):
    run = planted_round(tmp_path / "run", "old")
    state = read_json(run.path(1, "state.json"))
    write_json(run.path(1, "state.json"), {"completed": state["completed"][:3]})  # as an older rlaif wrote it
    (run.path(1, "candidates.jsonl")).write_text("")
    run.verify(1, ["prompts.jsonl", "candidates.jsonl"])  # nothing recorded, nothing to compare
    with pytest.raises(RlaifError, match="stage 'train' needs stage 'pairs' first"):
        run.require(1, "pairs", "train")


@pytest.mark.parametrize("name", ["round_001/state.json", "manifest.json"])
def test_corrupt_records_are_a_one_line_error(one_round, tiny_model, tmp_path, capsys, name):
    src, _ = one_round
    out = tmp_path / "out"
    recipe = copy_run(src, out, tiny_model)
    (out / name).write_text('{"completed": ["prompts", "gen')
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {out / name} is damaged (not valid JSON: Unterminated string") and "\n" not in err
    (out / name).write_text('["prompts"]')  # valid JSON, not what rlaif wrote
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    want = "not a list of completed stages and their files" if name.endswith("state.json") else "no recipe, model and rounds in it"
    assert err.startswith(f"error: {out / name} is damaged ({want})") and "\n" not in err


def test_corrupt_result_json_is_a_one_line_error(one_round, tiny_model, tmp_path):
    out = tmp_path / "out"
    copy_run(one_round[0], out, tiny_model)
    assert run_result(out)["status"] == "completed"
    (out / "result.json").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(RlaifError, match=r"result.json is damaged \(not UTF-8 text\)") as info:
        run_result(out)
    one_line(info)


def test_completeness_by_set_in_the_loop(one_round, tiny_model, tmp_path):
    """A round whose state lists five stages but not train is trained, not skipped as 'five of five'."""
    out = tmp_path / "out"
    recipe = copy_run(one_round[0], out, tiny_model)
    state = read_json(out / "round_001/state.json")
    state["completed"] = ["prompts", "generate", "judge", "pairs", "evaluate"]
    write_json(out / "round_001/state.json", state)
    shutil.rmtree(out / "round_001/adapter")
    assert main(["run", str(recipe)]) == 0
    assert (out / "round_001/adapter/adapter_model.safetensors").is_file()
    assert "train" in read_json(out / "round_001/state.json")["completed"]


# ---------------------------------------------------------------- safe loading


def test_garbage_safetensors_in_an_adapter(one_round, tiny_model, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(one_round[0] / "round_001/adapter", adapter)
    assert load_model(tiny_model, adapter=adapter) is not None
    (adapter / "adapter_model.safetensors").write_bytes(b"not a safetensors file at all" * 4)
    for load in (lambda: load_model(tiny_model, adapter=adapter), lambda: load_adapter_state(adapter)):
        with pytest.raises(RlaifError, match=f"could not load the LoRA adapter {adapter}: .*; if it is a run's") as info:
            load()
        one_line(info)
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(weights_of(one_round[0] / "round_001/adapter"), adapter / "adapter_model.bin")
    with pytest.raises(RlaifError, match="has no adapter_model.safetensors \\(rlaif loads safetensors only\\)"):
        load_model(tiny_model, adapter=adapter)


def weights_of(adapter: Path) -> dict:
    return load_file(adapter / "adapter_model.safetensors")


@pytest.fixture
def bin_only_model(tiny_model, tmp_path) -> Path:
    """The tiny model with its weights as a pickle (pytorch_model.bin) and no safetensors."""
    folder = tmp_path / "bin-model"
    shutil.copytree(tiny_model, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_pickle_only_model_is_refused_with_the_conversion(bin_only_model, tiny_model):
    for load in (lambda: load_model(str(bin_only_model)),
                 lambda: make_trainer(object, RunContext(recipe_from_dict(tiny_recipe(str(bin_only_model), Path("unused")))),
                                      None, SimpleNamespace(model_init_kwargs=None))):
        with pytest.raises(RlaifError) as info:
            load()
        text = one_line(info)
        assert text.startswith(f"model folder {bin_only_model} has only pickle weights (pytorch_model.bin)")
        assert f"save_pretrained('{bin_only_model}-safetensors', safe_serialization=True)" in text


def test_every_weight_load_asks_for_safetensors_and_no_remote_code(tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM

    calls = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    load_model(tiny_model)

    class Stop(Exception):
        pass

    def trainer_cls(model, args, **kwargs):  # TRL loads the weights itself, from args.model_init_kwargs
        calls.append(args.model_init_kwargs)
        raise Stop

    with pytest.raises(Stop):
        make_trainer(trainer_cls, RunContext(recipe_from_dict(tiny_recipe(tiny_model, Path("unused")))), None,
                     SimpleNamespace(model_init_kwargs=None))
    assert len(calls) == 2
    assert all(c["use_safetensors"] is True and c["trust_remote_code"] is False for c in calls)
