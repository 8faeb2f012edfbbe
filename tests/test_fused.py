"""The fused lockstep path (`--stack-layers fused`): its runs equal lone runs to float tolerance, its noise
bank draws what lone runs draw, and a step's kernel count depends on the set's shapes, not its size."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from sublearn import sheets
from sublearn.cli import main, resolve_argv
from sublearn.config import sheet_settings

SMALL = ["--teacher-epochs", "1", "--student-epochs", "2", "--noise-steps", "3", "--noise-bsize", "64",
         "--eval-noise-batches", "2", "--eval-noise-bsize", "50", "--data-bsize", "100",
         "--teacher-hidden-dims", "24,16", "--student-hidden-dims", "24,16"]
# several seeds and noise streams, m values, inits, N (followers), a frozen aux head, a perturbed teacher aux
# head (two teacher heads of one width in a stream), and runs that cannot join (a CNN, another lr)
MIXED = {
    "base": ([], 0), "m3": (["--m", "3"], 0), "m3_rand_fc1": (["--m", "3", "--student-init", "random,A,A,A"], 0),
    "base_N1": (["--noise-steps", "1"], 0), "base_N2_E3": (["--noise-steps", "2", "--student-epochs", "3"], 0),
    "base_class_random": (["--student-init", "A,A,random,A"], 0),
    "frozen_aux": (["--student-trainable", "aux_head:false"], 0),
    "teacher_head_perturbed": (["--perturb", "teacher:aux_head,std=0.1,timing=after_teacher_training"], 0),
    "cnn": (["--student-type", "cnn", "--student-hidden-dims", "8", "--m", "5"], 0),
    "other_lr": (["--student-lr", "0.003", "--student-init", "B,A,B,random"], 0),
    "s1": ([], 1), "s1_m3": (["--m", "3"], 1), "s1_rand_hidden": (["--student-init", "random,random,A,A"], 1),
    "normal": (["--noise-dist", "normal", "--m", "7"], 0), "perlin": (["--noise-dist", "perlin", "--m", "3"], 1),
    "normalized": (["--normalize-noise"], 1), "no_distillation": (["--student-epochs", "0"], 0),
}
# every stream holds the same widths: the first layer as one matmul per stream, targets by broadcasting
FIG2_LIKE = {f"s{seed}_m{m}_{init}": (["--m", str(m), "--student-init", init], seed)
             for seed in (0, 1) for m in (3, 10) for init in ("A,A,A,A", "random,A,A,A", "A,A,random,A")}
COMPARED = ["student_init_acc", "student_final_acc", "student_final_class_loss", "student_init_aux_loss",
            "student_final_aux_loss", "student_train_aux_loss_last"]


def resolved(tiny_data, tiny_cache, extra, seed=0, small=SMALL):
    return resolve_argv(["--data-dir", str(tiny_data), "--cache-dir", str(tiny_cache), "--device", "cpu",
                         "--seed", str(seed), *small, *extra])


def close(a: float, b: float, rtol: float = 1e-5) -> bool:
    return (a != a and b != b) or abs(a - b) <= rtol * max(abs(a), abs(b))


@pytest.fixture(scope="module")
def split(tiny_data, tiny_cache):
    from sublearn.data import ensure_cache, load

    cache, _ = ensure_cache("mnist", "balanced", str(tiny_data), str(tiny_cache))
    device = torch.device("cpu")
    return load(cache, "mnist", "balanced", None, device), load(cache, "mnist", "balanced", None, device,
                                                                  with_train=False)


def prepared(rcs: dict, split, teachers: dict, shared=None) -> dict:
    """Each run prepared (its teacher trained once); with ``shared``, as a fused batch job prepares them: the
    initial students evaluated together."""
    from sublearn.student import evaluate_prepared, prepare_student
    from sublearn.teacher import train_teacher_stage

    full, test = split
    device = torch.device("cpu")
    for rc in rcs.values():
        if rc.teacher_key() not in teachers:
            teachers[rc.teacher_key()] = train_teacher_stage(rc, full, device)
    runs = {name: prepare_student(rc, test, device, teachers[rc.teacher_key()], shared=shared,
                                  evaluate=shared is None) for name, rc in rcs.items()}
    if shared is not None:
        evaluate_prepared(list(runs.values()), lambda run: test, device, shared)
    return runs


def distilled(members: dict, split, stack_layers, shared=None, finish: bool = True) -> dict:
    """Each run's result and final student, of prepared runs distilled together (with ``shared``, as a batch
    job does: the fused runs that end at one step evaluated together)."""
    from sublearn.student import distill_stack, evaluate_finished, finish_student

    device = torch.device("cpu")
    name_of = {id(m): n for n, m in members.items()}
    out = {}

    def done(member, loss, seconds):
        if finish:
            out[name_of[id(member)]] = (finish_student(member, split[1], device, loss, seconds, shared=shared),
                                        member.student)

    together = None if shared is None else (lambda runs: evaluate_finished(runs, lambda run: split[1], device, shared))
    distill_stack(list(members.values()), device, done, stack_layers=stack_layers, on_step_done=together)
    return out


@pytest.mark.parametrize("runs", [MIXED, FIG2_LIKE], ids=["mixed", "fig2_like"])
def test_fused_runs_equal_lone_runs_to_tolerance(runs, tiny_data, tiny_cache, split, capsys):
    from sublearn.evaluation import SharedEvaluations

    rcs = {name: resolved(tiny_data, tiny_cache, extra, seed) for name, (extra, seed) in runs.items()}
    teachers: dict = {}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        shared = SharedEvaluations()  # as in a batch job
        fused = distilled(prepared(rcs, split, teachers, shared), split, "fused", shared)
        fused_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[fused] ")]
        lone = {}
        for name, rc in rcs.items():
            lone.update(distilled(prepared({name: rc}, split, teachers), split, False))
    finally:
        torch.set_num_threads(before)
    # one fused set: all but the CNN and the other learning rate (and the trajectories' followers)
    followers = {"base_N1", "base_N2_E3", "base_class_random"} if runs is MIXED else \
        {name for name in runs if name.endswith("A,A,random,A")}
    alone = {"cnn", "other_lr", "no_distillation"} if runs is MIXED else set()
    assert len(fused_lines) == 1 and fused_lines[0].startswith(f"[fused] {len(runs) - len(followers) - len(alone)} ")
    for name in rcs:
        a, b = fused[name][0].run_row, lone[name][0].run_row
        for column in COMPARED:
            assert close(a[column], b[column]), (name, column, a[column], b[column])
        for (key, mine), theirs in zip(fused[name][1].state_dict().items(), lone[name][1].state_dict().values(),
                                       strict=True):
            assert torch.linalg.vector_norm(mine - theirs) <= 1e-5 * torch.linalg.vector_norm(theirs), (name, key)
        for ra, rb in zip(fused[name][0].layer_rows, lone[name][0].layer_rows, strict=True):
            assert ra["status"] == rb["status"]
            if ra["status"] == "comparable":
                assert close(ra["other_norm"], rb["other_norm"]), (name, ra["comparison"], ra["layer_name"])


def test_noise_bank_draws_what_lone_runs_draw():
    """A bank's streams draw T steps at once (on the CPU) and give, bit for bit, each step's sample_noise."""
    from types import SimpleNamespace

    from sublearn.config import ExperimentConfig
    from sublearn.fused import NoiseBank
    from sublearn.noise import DISTRIBUTIONS, sample_noise

    configs = [ExperimentConfig(noise_dist=dist, normalize_noise=norm, noise_bsize=48)
               for dist in DISTRIBUTIONS for norm in (False, True)]
    for together in (configs, configs[:1], [configs[0], configs[0]]):  # mixed rows; one row; rows sharing steps
        streams = [SimpleNamespace(config=c, generator=torch.Generator().manual_seed(i))
                   for i, c in enumerate(together)]
        bank = NoiseBank(streams, torch.device("cpu"), steps=7)
        assert bank.period == 7
        alone = [torch.Generator().manual_seed(i) for i in range(len(together))]
        for _ in range(16):
            bank.advance({id(s) for s in streams})
            for stream, generator in zip(streams, alone, strict=True):
                assert torch.equal(bank.x(stream), sample_noise(48, stream.config, "cpu", generator))


def _step_ops(tiny_data, tiny_cache, split, specs: list[tuple[list[str], int]], teachers: dict):
    """Kernel ops of one steady-state fused step (no noise draw) and their names, as bench/bench_step.py
    counts them: two distillations of 8 and 16 steps (each draws its noise once), the difference over 8."""
    from sublearn.opcount import OpCounter

    tiny = ["--teacher-hidden-dims", "8,8", "--student-hidden-dims", "8,8", "--noise-bsize", "4",
            "--teacher-epochs", "1", "--student-epochs", "1", "--eval-noise-batches", "1", "--eval-noise-bsize", "8"]
    counters = []
    for steps in (8, 16):
        rcs = {i: resolved(tiny_data, tiny_cache, [*extra, "--noise-steps", str(steps)], seed, tiny)
               for i, (extra, seed) in enumerate(specs)}
        members = prepared(rcs, split, teachers)
        with OpCounter() as counter:
            distilled(members, split, "fused", finish=False)
        counters.append(counter)
    names = {k: (v - counters[0].names.get(k, 0)) / 8 for k, v in counters[1].names.items()}
    return (counters[1].ops - counters[0].ops) / 8, {k: v for k, v in names.items() if v}


def test_a_fused_steps_kernel_count_does_not_grow_with_its_members(tiny_data, tiny_cache, split):
    """Pinned: a fused step of students of one width takes the same kernel ops for 4 and 16 members, K
    seeds of one member each or one seed of K members (other inits), with no host read; a second width adds
    its own head, loss and their backward, not a per-member op."""
    inits = ["A,A,A,A", "random,A,A,A", "A,random,A,A", "random,random,A,A", "A,A,A,random", "B,A,A,A",
             "A,B,A,A", "B,B,A,A", "B,A,A,random", "A,B,A,random", "random,B,A,A", "B,random,A,A",
             "random,A,A,random", "A,random,A,random", "B,B,A,random", "random,random,A,random"]
    teachers: dict = {}
    seeds = {k: _step_ops(tiny_data, tiny_cache, split, [([], seed) for seed in range(k)], teachers)
             for k in (4, 16)}
    members = {k: _step_ops(tiny_data, tiny_cache, split, [(["--student-init", i], 0) for i in inits[:k]], teachers)
               for k in (4, 16)}
    assert seeds[4] == seeds[16] and members[4] == members[16]
    assert seeds[4][0] == 32, seeds[4]  # 2 teacher layers, a head; 2 layers, head, loss; their backward; Adam
    assert members[4][0] == 33, members[4]  # + the first layer's gradient back from member to stream order
    assert "_local_scalar_dense" not in seeds[16][1] and "item" not in seeds[16][1]
    two_widths = _step_ops(tiny_data, tiny_cache, split, [(["--m", str(m)], seed) for seed in range(4)
                                                         for m in (3, 10)], teachers)
    # + a width: teacher head, student head, loss (2), their backward (4); the widths' gradients joined (cat);
    # two members per stream: the first layer's output from stream to member order and back (2 copies)
    assert two_widths[0] == 32 + 8 + 1 + 2, two_widths


def _rows(run_dirs: dict) -> dict:
    out = {}
    for name, run_dir in run_dirs.items():
        with open(Path(run_dir) / "runs.csv", newline="") as handle:
            out[name] = next(csv.DictReader(handle))
    return out


def test_batch_cli_stack_layers_fused(tiny_data, tiny_cache, tmp_path, capsys):
    """`sublearn batch --stack-layers fused` fuses students of two seeds and writes what `off` writes, to
    float tolerance; `sublearn teachers` takes the same value (a workflow passes it to both)."""
    from sublearn.plan import resolve, teacher_config

    rcs = {"base": resolved(tiny_data, tiny_cache, []), "m5": resolved(tiny_data, tiny_cache, ["--m", "5"]),
           "seed1": resolved(tiny_data, tiny_cache, ["--m", "3"], seed=1)}
    teachers = tmp_path / "teachers"
    sheet = tmp_path / "teachers.jsonl"
    sheet.write_text("".join(sheets.teacher_record(key, str(teachers / f"{key}.pt"),
                                                   sheet_settings(resolve(teacher_config(rc)).config)) + "\n"
                             for key, rc in {rc.teacher_key(): rc for rc in rcs.values()}.items()))
    assert main(["teachers", "--sheet", str(sheet), "--data-dir", str(tiny_data), "--cache-dir", str(tiny_cache),
                 "--device", "cpu", "--threads", "1", "--stack-layers", "fused"]) == 0
    rows = {}
    for mode in ("fused", "off"):
        sheet = tmp_path / f"{mode}.jsonl"
        dirs = {name: tmp_path / mode / name for name in rcs}
        sheet.write_text("".join(sheets.sheet_record(rc.run_key(), str(dirs[name]), sheet_settings(rc.config)) + "\n"
                                 for name, rc in rcs.items()))
        capsys.readouterr()
        assert main(["batch", "--sheet", str(sheet), "--teacher-dir", str(teachers), "--data-dir", str(tiny_data),
                     "--cache-dir", str(tiny_cache), "--device", "cpu", "--threads", "1",
                     "--stack-layers", mode]) == 0
        assert ("[fused] 3 students fused" in capsys.readouterr().out) == (mode == "fused")
        rows[mode] = _rows(dirs)
        assert {row["training_path"] for row in rows[mode].values()} == {"fused" if mode == "fused" else "alone"}
    for name in rcs:
        for column in COMPARED:
            a, b = float(rows["fused"][name][column]), float(rows["off"][name][column])
            assert close(a, b) or (math.isnan(a) and math.isnan(b)), (name, column, a, b)


def test_fused_runs_done_at_one_step_are_evaluated_together(tiny_data, tiny_cache, split, monkeypatch):
    """A batch job's fused runs that end at one step: evaluated in one batched forward per layer and batch
    for each body shape (here one, two aux widths; a follower shares its leader's features), each equal to its own
    evaluation to float tolerance; the kernel ops of a group do not grow with its members. Their layer
    comparisons are computed together too (finish_student then computes none). The initial students
    (prepared as a fused job does) are evaluated together likewise."""
    from sublearn.evaluation import SharedEvaluations, aux_mse_on_noise, evaluate_class, evaluate_stacked
    from sublearn.opcount import OpCounter
    from sublearn.records import VALUE_NAMES, comparisons, pair_values
    from sublearn.student import distill_stack, evaluate_finished

    device, test = torch.device("cpu"), split[1]
    rcs = {name: resolved(tiny_data, tiny_cache, extra, seed) for name, (extra, seed) in FIG2_LIKE.items()}
    shared = SharedEvaluations()
    import sublearn.student as student_module

    stacked_calls = []  # (moment, students) of each evaluate_stacked call, the real function called

    def spy(students, *args, **kwargs):
        stacked_calls.append((args[5], len(students)))
        return evaluate_stacked(students, *args, **kwargs)

    monkeypatch.setattr(student_module, "evaluate_stacked", spy)
    teachers: dict = {}
    members = prepared(rcs, split, teachers, shared)
    assert stacked_calls == [("student_initial", 12)]  # one group: aux heads of each width batched
    initial = prepared(rcs, split, teachers)  # each evaluated alone
    assert all(math.isfinite(run.init_aux) for run in members.values())
    groups, reported = [], []
    distill_stack(list(members.values()), device, lambda run, loss, seconds: reported.append(run), "fused",
                  lambda runs: (groups.append(list(runs)), evaluate_finished(runs, lambda run: test, device, shared)))
    assert len(groups) == 1 and {id(r) for r in groups[0]} == {id(r) for r in members.values()} \
        and len(reported) == len(members)
    assert stacked_calls[1:] == [("student_final", 12)]
    for name, run in members.items():
        assert run.settled and run.final_evaluation is not None, name
        acc, loss, aux = run.final_evaluation
        c = run.rc.config
        lone_acc, lone_loss = evaluate_class(run.student, test.test_x, test.test_y, c.data_bsize)
        lone_aux = aux_mse_on_noise(run.student, run.teacher, run.rc, device, "student_final")
        assert acc == lone_acc and close(loss, lone_loss) and close(aux, lone_aux), (name, run.final_evaluation,
                                                                                     (lone_acc, lone_loss, lone_aux))
        rows, pairs = comparisons(run.teacher.layer_names, run.student.layer_names, run.snaps, {})
        assert pairs and all(tuple(pair[2:]) in shared.comparisons for pair in pairs), name
        with OpCounter() as counter:  # finish_student's comparisons: every value known
            together = pair_values(pairs, shared.comparisons)
        assert counter.ops == 0, name
        for mine, alone in zip(together, pair_values(pairs), strict=True):
            # a cosine in [-1, 1], to an absolute tolerance (near 0 a relative one means nothing)
            assert abs(mine["cosine"] - alone["cosine"]) <= 1e-6 or close(mine["cosine"], alone["cosine"]), name
            assert all(close(mine[k], alone[k]) for k in VALUE_NAMES if k != "cosine"), (name, mine, alone)
        lone = initial[name]
        assert run.init_acc == lone.init_acc and close(run.init_loss, lone.init_loss) \
            and close(run.init_aux, lone.init_aux), name

    def counted(runs):
        args = ([r.student for r in runs], [r.teacher for r in runs], [r.rc for r in runs], test.test_x,
                test.test_y, device, "student_final", shared)
        evaluate_stacked(*args)  # the eval noise and teacher targets cached
        with OpCounter() as counter:
            evaluate_stacked(*args)
        return counter.ops

    # two seeds' m = 3 runs, each seed's follower sharing its leader's body: 4 and 6 members, equal ops
    m3 = {name: run for name, run in members.items() if "_m3_" in name}
    assert len(m3) == 6
    some = [run for name, run in m3.items() if name.endswith(("_A,A,A,A", "_A,A,random,A"))]
    assert counted(some) == counted(list(m3.values()))


def test_stacked_pair_values_in_chunks_equal_lone_pair_values():
    """Pairs of several shapes stacked a few at a time (a small ``max_bytes``: chunk edges fall inside a
    shape's pairs) give each pair the values pair_values gives it alone, norms shared by key."""
    from sublearn.records import VALUE_NAMES, pair_values, stacked_pair_values

    generator = torch.Generator().manual_seed(0)
    tensors = {(name, k): torch.randn(shape, generator=generator)
               for name, shape in (("fc1", (6, 5)), ("bias", (7,))) for k in range(5)}
    tensors[("fc1", 5)] = tensors[("fc1", 0)].clone()  # an equal pair: difference 0, cosine 1
    tensors[("bias", 5)] = torch.zeros(7)  # a zero side: cosine NaN
    pairs = [(tensors[(name, 0)], tensors[(name, k)], (name, 0), (name, k))
             for name in ("fc1", "bias") for k in range(1, 6)]
    pairs.append((tensors[("fc1", 1)], tensors[("fc1", 2)], ("fc1", 1), ("fc1", 2)))
    known: dict = {}
    stacked_pair_values(pairs, known, max_bytes=3 * 4 * 30 * 2)  # two fc1 pairs a chunk
    assert all(tuple(pair[2:]) in known for pair in pairs)
    for pair, alone in zip(pairs, pair_values(pairs), strict=True):
        mine = known[tuple(pair[2:])]
        for name in VALUE_NAMES:
            if math.isnan(alone[name]):
                assert math.isnan(mine[name]), (pair[2:], name)
            else:
                assert mine[name] == pytest.approx(alone[name], rel=1e-6, abs=1e-6), (pair[2:], name)
    assert known[(("fc1", 0), ("fc1", 5))]["diff_norm"] == 0.0
