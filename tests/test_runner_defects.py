"""Runner-side defects found by an adversarial round: CNN layer names that clash with a torch module's own
attributes, NUL bytes in a sheet's output paths, and a damaged teacher checkpoint whose summary was intact
(counted as trained by every planning until a user deleted files by hand)."""

from __future__ import annotations

import json
import shutil

import pytest
from test_batch import resolved, teacher_sheet, train_teachers, write_sheet
from test_integrity import batch_argv, good_record, one_line_error, write_records  # noqa: F401 - a fixture

from sublearn import sheets
from sublearn.architecture import MODULE_ATTRIBUTES, normalize_cnn_spec
from sublearn.cli import main
from sublearn.errors import UsageError

CNN = [{"name": "conv1", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
       {"name": "fc1", "type": "linear", "out_features": 16}]


@pytest.mark.parametrize("name", ["forward", "training", "eval", "features", "state_dict", "fc-1", "1fc", "a b"])
def test_a_cnn_layer_name_that_is_not_a_plain_new_name_is_refused(name):
    spec = [{**CNN[0], "name": name}, CNN[1]]
    with pytest.raises(UsageError, match=f"invalid value {name!r}; a layer name is a letter then"):
        normalize_cnn_spec(spec, "--student-arch-spec")


def test_the_refused_names_cover_every_attribute_of_the_model():
    """Every public attribute of a built model (torch's and ours) is refused as a layer name: a torch
    release that adds one makes this fail, not a user's run."""
    from sublearn.cli import resolve_argv
    from sublearn.model import SplitHeadModel

    rc = resolve_argv(["--device", "cpu", "--student-type", "cnn", "--student-arch-spec", json.dumps(CNN)])
    model = SplitHeadModel(rc.student, rc.config.m, rc.num_classes)
    public = {a for a in dir(model) if not a.startswith("_")} - set(model.layer_names)
    assert public <= MODULE_ATTRIBUTES, sorted(public - MODULE_ATTRIBUTES)


def test_a_clashing_cnn_layer_name_stops_before_anything_runs(tiny_data, tiny_cache, tmp_path, capsys):
    """As a flag and in a batch sheet (what `sublearn batch --plan` and `snakemake -n` read)."""
    spec = [{**CNN[0], "name": "forward"}, CNN[1]]
    argv = ["run", "--data-dir", str(tiny_data), "--cache-dir", str(tiny_cache), "--device", "cpu",
            "--student-type", "cnn", "--student-arch-spec", json.dumps(spec), "--outdir", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "--student-arch-spec: invalid value 'forward'" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()
    rc = resolved(tiny_data, tiny_cache, ["--student-type", "cnn", "--student-arch-spec", json.dumps(CNN)])
    sheet = tmp_path / "sheet.jsonl"
    write_sheet(sheet, {"r": rc}, tmp_path / "runs")
    record = json.loads(sheet.read_text())
    record["settings"]["student_arch_spec"] = spec
    write_records(sheet, [record])
    assert main([*batch_argv(sheet, tmp_path, tiny_data, tiny_cache), "--plan"]) == 2
    assert "invalid value 'forward'" in one_line_error(capsys)


def test_a_nul_byte_in_a_sheet_path_is_a_one_line_error(good_record, tiny_data, tiny_cache, tmp_path, capsys):  # noqa: F811
    sheet = tmp_path / "sheet.jsonl"
    write_records(sheet, [{**good_record, "run_dir": "runs/a\x00b"}])
    assert main(batch_argv(sheet, tmp_path, tiny_data, tiny_cache)) == 2
    assert "a path cannot hold a NUL byte" in one_line_error(capsys)
    teachers = tmp_path / "teachers.jsonl"
    teacher_sheet(teachers, {"a": resolved(tiny_data, tiny_cache, [])}, tmp_path / "set")
    record = json.loads(teachers.read_text())
    write_records(teachers, [{**record, "out": "set/a\x00.pt"}])
    assert main(["teachers", "--sheet", str(teachers), "--data-dir", str(tiny_data), "--device", "cpu"]) == 2
    assert "a path cannot hold a NUL byte" in one_line_error(capsys)


@pytest.mark.parametrize("damage", ["truncated", "another seed's"])
def test_a_damaged_teacher_is_trained_again_on_the_next_run(damage, tiny_data, tiny_cache, tmp_path, capsys):
    """The batch job names the damage once and removes the teacher's summary; the next planning counts the
    teacher as untrained, `sublearn teachers` trains it again, and the batch then computes the run."""
    rc, other = resolved(tiny_data, tiny_cache, []), resolved(tiny_data, tiny_cache, [], seed=1)
    teachers = tmp_path / "teachers"
    train_teachers([rc, other], tiny_data, tiny_cache, teachers)
    pt = teachers / f"{rc.teacher_key()}.pt"
    if damage == "truncated":
        pt.write_bytes(pt.read_bytes()[:1000])
    else:
        shutil.copyfile(teachers / f"{other.teacher_key()}.pt", pt)
    assert sheets.recorded_teacher(pt) is not None  # the summary still says "trained"
    sheet = tmp_path / "sheet.jsonl"
    dirs = write_sheet(sheet, {"r": rc}, tmp_path / "runs")
    argv = batch_argv(sheet, teachers, tiny_data, tiny_cache)
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert str(pt) in err and "the next run of the workflow trains this teacher again" in err
    assert sheets.recorded_teacher(pt) is None and not pt.with_suffix(".json").exists()

    plan = tmp_path / "teachers.jsonl"
    teacher_sheet(plan, {"r": rc}, teachers)
    assert main(["teachers", "--sheet", str(plan), "--data-dir", str(tiny_data), "--cache-dir", str(tiny_cache),
                 "--device", "cpu", "--threads", "1"]) == 0
    assert sheets.recorded_teacher(pt) is not None
    assert main(argv) == 0 and sheets.recorded_result(dirs["r"]) is not None
