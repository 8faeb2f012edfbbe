"""The reference's random streams, reproduced piece by piece."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sublearn.config import ExperimentConfig
from sublearn.errors import UsageError
from sublearn.model import build_model
from sublearn.noise import perlin_noise, sample_noise
from sublearn.perturb import apply_perturbations
from sublearn.plan import resolve
from sublearn.seeding import derived_seed, set_seed
from sublearn.syntax import parse_bool, parse_init_source, parse_layer_config
from sublearn.teacher import shuffled_batches

LAYERS = ["fc1", "fc2", "class_head", "aux_head"]


def test_derived_seed_formula():
    label = "init_source:A:fc1"
    expected = 100_000 * 7 + int(hashlib.sha256(label.encode()).hexdigest()[:12], 16) % 900_000_000
    assert derived_seed(7, "init_source", "A", "fc1") == expected
    assert derived_seed(0, "experiment_start") == 696_273_291  # pinned: any change breaks every result
    assert derived_seed(42, "experiment_start") - derived_seed(0, "experiment_start") == 4_200_000


def test_set_seed_seeds_all_three_generators():
    import random

    set_seed(123)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_seed(123)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


@pytest.mark.parametrize(("n", "batch"), [(1000, 64), (1024, 256), (37, 100)])
def test_shuffle_matches_dataloader(n, batch):
    seed = derived_seed(5, "dataloader_shuffle")
    g_loader, g_ours = torch.Generator(), torch.Generator()
    g_loader.manual_seed(seed)
    g_ours.manual_seed(seed)
    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=batch, shuffle=True, generator=g_loader)
    for _epoch in range(3):
        expected = [b[0] for b in loader]
        ours = shuffled_batches(n, batch, g_ours)
        assert len(ours) == len(expected)
        for a, b in zip(ours, expected, strict=True):
            assert torch.equal(a, b)
    assert torch.equal(g_loader.get_state(), g_ours.get_state())


def _plan(**overrides):
    return resolve(ExperimentConfig(**overrides))


def test_a_layers_identical_across_models_and_b_random_differ():
    rc = _plan(student_init="A,B,random,A")
    teacher = build_model(rc.teacher, 10, 10, 3, torch.device("cpu"))
    student = build_model(rc.student, 10, 10, 3, torch.device("cpu"))
    assert torch.equal(teacher.fc1.weight, student.fc1.weight)
    assert torch.equal(teacher.aux_head.bias, student.aux_head.bias)
    assert not torch.equal(teacher.fc2.weight, student.fc2.weight)  # B vs A
    assert not torch.equal(teacher.class_head.weight, student.class_head.weight)  # random vs A


def test_reset_uses_layer_seed_and_leaves_global_streams_alone():
    rc = _plan()
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    model = build_model(rc.teacher, 10, 10, 11, torch.device("cpu"))
    layer = torch.nn.Linear(256, 256)
    torch.manual_seed(derived_seed(11, "init_source", "A", "fc2"))
    layer.reset_parameters()
    assert torch.equal(model.fc2.weight, layer.weight)
    # every draw has a generator of its own; each later step of the reference seeds before it draws
    torch.manual_seed(0)
    build_model(rc.teacher, 10, 10, 11, torch.device("cpu"))
    assert torch.equal(torch.rand(1), expected_next)


CNN = [{"name": "conv1", "type": "conv2d", "out_channels": 4, "kernel_size": 3,
        "pool": {"type": "max", "kernel_size": 2}},
       {"name": "conv2", "type": "conv2d", "out_channels": 3, "kernel_size": 3, "bias": False},
       {"name": "fc1", "type": "linear", "out_features": 16}]


@pytest.mark.parametrize("overrides", [
    {},
    {"student_init": "random,A,random,A"},
    {"student_init": "A,random,A,A"},
    {"student_init": "B,B,A,random", "teacher_init": "random,random,random,random"},
    {"student_init": "random,random,random,random,random", "student_hidden_dims": [32, 8, 16]},
    {"teacher_type": "cnn", "student_type": "cnn", "teacher_arch_spec": CNN, "student_arch_spec": CNN,
     "student_init": "A,random,B,A,random"},
])
def test_built_models_equal_the_reference_construction(overrides):
    """Generators of their own, layers drawn once and shared (InitialWeights), draws stopped after the last
    layer that keeps them: every model equals the reference's construction, for any order of builds."""
    import slow_reference

    from sublearn.model import InitialWeights, SplitHeadModel

    rc = _plan(**overrides)
    inits = InitialWeights()
    for seed, m in [(3, 10), (3, 4), (5, 10), (3, 10)]:
        for plan in (rc.student, rc.teacher):
            expected = slow_reference.build(plan, m, 10, seed).state_dict()  # the reference's construction
            for shared in (inits, None):
                model = build_model(plan, m, 10, seed, torch.device("cpu"), shared)
                got = model.state_dict()
                assert sorted(got) == sorted(expected)
                assert repr(model) == repr(SplitHeadModel(plan, m, 10))  # the modules nn.Linear/Conv2d make
                assert all(torch.equal(got[k], expected[k]) for k in expected), (plan.role, seed, m)


def test_random_layer_keeps_construction_weights():
    rc = _plan(teacher_init="random,A,A,A")
    model = build_model(rc.teacher, 10, 10, 4, torch.device("cpu"))
    set_seed(derived_seed(4, "teacher", "model_random_init"))
    assert torch.equal(model.fc1.weight, torch.nn.Linear(784, 256).weight)


def test_perturbation_draws_and_rows():
    rc = _plan(seed=9, perturb_specs=[{"target": "student", "layers": ["aux_head"], "std": 0.1}])
    device = torch.device("cpu")
    student = build_model(rc.student, 10, 10, 9, device)
    before = student.aux_head.weight.detach().clone()
    bias_before = student.aux_head.bias.detach().clone()
    torch.manual_seed(1)
    state = torch.get_rng_state()
    rows = apply_perturbations("before_student_training", rc, {"student": student}, device, "r")
    assert torch.equal(torch.get_rng_state(), state)  # forked stream
    set_seed(derived_seed(9, "perturb", 0, "before_student_training", "student", "aux_head"))
    w_noise = torch.randn_like(before) * 0.1
    b_noise = torch.randn_like(bias_before) * 0.1
    assert torch.equal(student.aux_head.weight, before + w_noise)
    assert torch.equal(student.aux_head.bias, bias_before + b_noise)
    assert len(rows) == 1 and rows[0]["layer_name"] == "aux_head"
    assert rows[0]["weight_delta_norm"] == pytest.approx(float(w_noise.norm()), rel=1e-6)
    assert apply_perturbations("after_student_training", rc, {"student": student}, device, "r") == []


def test_perturbation_zero_std_changes_nothing():
    rc = _plan(perturb_specs=[{"target": "teacher", "layers": "all", "std": 0.0,
                               "timing": "before_teacher_training"}])
    teacher = build_model(rc.teacher, 10, 10, 1, torch.device("cpu"))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    rows = apply_perturbations("before_teacher_training", rc, {"teacher": teacher}, torch.device("cpu"), "r")
    assert len(rows) == 4
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_perlin_noise_properties():
    torch.manual_seed(0)
    x = perlin_noise(16, 8, torch.device("cpu"))
    assert x.shape == (16, 1, 28, 28)
    assert torch.allclose(x.abs().amax(dim=(1, 2, 3)), torch.ones(16), atol=1e-5)
    # Perlin noise vanishes on lattice points: pixel 0 and every 28/8 = 3.5 -> pixels 0, 7, 14, 21
    lattice = x[:, 0, ::7, ::7]
    assert lattice.abs().max() < 1e-5  # float32 rounding of y * r / 28
    torch.manual_seed(0)
    assert torch.equal(perlin_noise(16, 8, torch.device("cpu")), x)


def test_uniform_and_normalised_noise():
    cfg = ExperimentConfig(noise_dist="uniform")
    torch.manual_seed(3)
    x = sample_noise(50, cfg, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(x, 2.0 * torch.rand(50, 1, 28, 28) - 1.0)
    assert x.min() >= -1 and x.max() <= 1
    cfg = ExperimentConfig(noise_dist="normal", normalize_noise=True)
    torch.manual_seed(3)
    y = sample_noise(5, cfg, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(y, (torch.randn(5, 1, 28, 28) - 0.1307) / 0.3081)


def test_layer_config_syntax():
    assert parse_layer_config("A,random,B,A", LAYERS, "A", parse_init_source, "--x") == dict(
        zip(LAYERS, ["A", "random", "B", "A"], strict=True))
    assert parse_layer_config("all:random,aux_head:a", LAYERS, "A", parse_init_source, "--x") == {
        "fc1": "random", "fc2": "random", "class_head": "random", "aux_head": "A"}
    assert parse_layer_config(None, LAYERS, True, parse_bool, "--x") == dict.fromkeys(LAYERS, True)
    assert parse_layer_config("fc1:false", LAYERS, True, parse_bool, "--x")["fc1"] is False
    for raw, fragment in [("A,A,A", "expected 4 positional"), ("fc1:A,A", "not both"),
                          ("fc9:A", "unknown layer 'fc9'"), ("A,A,C,A", "allowed init sources")]:
        with pytest.raises(UsageError, match=fragment):
            parse_layer_config(raw, LAYERS, "A", parse_init_source, "--student-init")
    with pytest.raises(UsageError, match="--x: invalid value 'maybe'"):
        parse_bool("maybe", "--x")


def test_teacher_key_ignores_m_and_student_settings():
    base = _plan()
    assert _plan(m=250).teacher_key() == base.teacher_key()
    assert _plan(student_init="random,random,A,A", noise_steps=3).teacher_key() == base.teacher_key()
    assert _plan(teacher_init="A,A,A,random").teacher_key() == base.teacher_key()  # aux head only
    assert _plan(seed=1).teacher_key() != base.teacher_key()
    assert _plan(teacher_hidden_dims=[256, 8]).teacher_key() != base.teacher_key()
    assert _plan(teacher_trainable="true,true,false,true").teacher_key() != base.teacher_key()
    assert _plan(perturb_specs=[{"target": "teacher", "std": 0.1, "timing": "before_teacher_training"}]
                 ).teacher_key() != base.teacher_key()


def test_cnn_spec_layers_and_shapes():
    spec = [{"name": "conv1", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1,
             "pool": {"type": "max", "kernel_size": 2}},
            {"type": "conv", "out_channels": 6, "kernel_size": 3, "activation": "gelu",
             "pool": {"type": "adaptive_avg", "output_size": 3}},
            {"type": "linear", "out_features": 12, "activation": "tanh"}]
    rc = _plan(student_type="cnn", student_arch_spec=spec)
    assert rc.student.layer_names == ["conv1", "conv2", "fc1", "class_head", "aux_head"]
    model = build_model(rc.student, 7, 10, 0, torch.device("cpu"))
    assert model.fc1.in_features == 6 * 3 * 3
    class_logits, aux = model(torch.zeros(2, 1, 28, 28))
    assert class_logits.shape == (2, 10) and aux.shape == (2, 7)
    default = _plan(teacher_type="cnn", teacher_hidden_dims=[64])
    assert default.teacher.layer_names == ["conv1", "conv2", "fc1", "class_head", "aux_head"]
    assert build_model(default.teacher, 3, 10, 0, torch.device("cpu")).fc1.weight.shape == (64, 64 * 7 * 7)


def test_cpu_adam_is_bit_identical_to_torch_adam():
    from sublearn.training import CpuAdam

    torch.manual_seed(0)
    layers = [torch.nn.Linear(20, 16), torch.nn.Linear(16, 4), torch.nn.Linear(16, 3)]  # last: no gradient
    twins = [torch.nn.Linear(20, 16), torch.nn.Linear(16, 4), torch.nn.Linear(16, 3)]
    for a, b in zip(layers, twins, strict=True):
        b.load_state_dict(a.state_dict())
    ours = CpuAdam([p for m in layers for p in m.parameters()], lr=3e-3)
    theirs = torch.optim.Adam([p for m in twins for p in m.parameters()], lr=3e-3)
    for step in range(40):
        x = torch.randn(32, 20)
        for model, optimizer in ((layers, ours), (twins, theirs)):
            loss = model[1](torch.relu(model[0](x))).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        for a, b in zip(layers, twins, strict=True):
            assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), step
