"""Structure of the execution profiles (profiles/*/config.yaml) and conda environments (envs/*.yaml).

Fast checks only: every profile is read by Snakemake's own argument parser (so a misspelt key or a bad
value fails here, not on a cluster), the SLURM profiles keep the properties the scale-out relies on, and
the conda files are pinned conda-forge environments. The real SLURM run is .ci/slurm/test.sh.
"""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILES = {p.parent.name: p for p in sorted((REPO / "profiles").glob("*/config.yaml"))}
CI_OVERRIDES = REPO / ".ci" / "slurm" / "profile" / "config.yaml"
SLURM_PROFILES = ["slurm-cpu", "slurm-gpu"]
CONFIGS = [REPO / "config" / "config.yaml", REPO / "config" / "quick.yaml"]
ENVS = sorted((REPO / "envs").glob("*.yaml"))
# rules whose memory and wall time the workflow computes per job from config `resources`
SIZED_BY_WORKFLOW = {"prepare_data"}  # and the teacher and batch rules (one per job: teachers_<id>, batch_<id>)


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def have_slurm_plugin() -> bool:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return False
    return True


def snakemake_parse(*profiles: Path):
    """Parse the profiles exactly as `snakemake --profile A --profile B` does; fail on any bad entry."""
    from snakemake.cli import get_argument_parser

    parser = get_argument_parser(profiles=[str(p.parent) for p in profiles])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            return parser.parse_args([])
        except SystemExit:
            pytest.fail(f"Snakemake refuses {', '.join(map(str, profiles))}: {err.getvalue().splitlines()[-1]}")


def workflow_rules() -> set[str]:
    """Rule names of the workflow (named rules and `use rule ... as NAME`), read from the sources."""
    names = set()
    for path in [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]:
        text = path.read_text()
        names |= set(re.findall(r"^rule (\w+):", text, re.M))
        names |= set(re.findall(r"^use rule \w+ as (\w+)", text, re.M))
    return names


def max_config_threads() -> int:
    return max(max(load(c)["threads"].values()) for c in CONFIGS if c.is_file())


# -------------------------------------------------------------------------------------------- profiles


def test_the_expected_profiles_exist():
    assert {"default", *SLURM_PROFILES} <= set(PROFILES)


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profile_is_read_by_snakemake(name):
    data = load(PROFILES[name])
    if any(key.startswith("slurm-") for key in data) or data.get("executor") == "slurm":
        if not have_slurm_plugin():
            pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    args = snakemake_parse(PROFILES[name])
    assert args.keep_going and args.rerun_incomplete and args.keep_incomplete and args.printshellcmds
    assert args.latency_wait >= 5


def test_ci_overrides_layer_on_the_real_profile():
    if not have_slurm_plugin():
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    args = snakemake_parse(PROFILES["slurm-cpu"], CI_OVERRIDES)
    assert args.executor == "slurm"
    # without slurmdbd, sacct never answers and Snakemake would wait forever
    assert args.slurm_status_command == "squeue"
    # squeue forgets a finished job after MinJobAge; the executor falls back to sacct below 3 x this
    min_job_age = int(re.search(r"SLURM_CI_MIN_JOB_AGE:-(\d+)", (REPO / ".ci/slurm/start-cluster.sh").read_text())[1])
    assert min_job_age > 3 * args.slurm_init_seconds_before_status_checks
    # everything that is not overridden comes from the real profile
    overridden = set(load(CI_OVERRIDES))
    assert "default-resources" not in overridden and "set-resources" not in overridden
    assert "executor" not in overridden and "groups" not in overridden


def test_default_profile_runs_locally():
    data = load(PROFILES["default"])
    assert data.get("executor", "local") == "local"
    assert data["cores"] in ("all",) or int(data["cores"]) >= 1
    for key in ("keep-going", "rerun-incomplete", "printshellcmds", "latency-wait"):
        assert key in data
    # a quiet terminal by default: no rule blocks, shell commands or reasons; the README names the flag
    # that shows them (a --quiet on the command line replaces the profile's)
    args = snakemake_parse(PROFILES["default"])
    assert {"rules", "reason"} <= {q.name.lower() for q in args.quiet}, args.quiet
    assert "--quiet host" in (REPO / "README.md").read_text()


def test_switching_profiles_never_reruns_finished_jobs():
    """Same rerun triggers everywhere, and not the software environment: a CPU or CUDA conda env, or
    none, gives the same numbers, so moving between profiles (or adding --sdm conda) redoes nothing."""
    triggers = {name: tuple(sorted(load(path).get("rerun-triggers", []))) for name, path in PROFILES.items()}
    assert len(set(triggers.values())) == 1, triggers
    assert "software-env" not in next(iter(triggers.values()))
    assert set(next(iter(triggers.values()))) == {"mtime", "params", "input", "code"}


@pytest.mark.parametrize("name", SLURM_PROFILES)
def test_slurm_profile_shape(name):
    text = PROFILES[name].read_text()
    data = load(PROFILES[name])
    assert data["executor"] == "slurm"
    assert int(data["jobs"]) >= 1
    # the one place a user edits: partition and account, visible and commented out
    assert re.search(r"^\s*#\s*slurm_partition:", text, re.M)
    assert re.search(r"^\s*#\s*slurm_account:", text, re.M)
    assert "EDIT" in text
    assert {"runtime", "mem_mb"} <= set(data["default-resources"])


@pytest.mark.parametrize("name", SLURM_PROFILES)
def test_profiles_size_jobs_by_the_batch_plan_not_by_groups(name):
    data = load(PROFILES[name])
    # students run in batch jobs sized by the workflow; SLURM groups would add up their wall times
    assert "groups" not in data and "group-components" not in data
    # `cores` caps every rule's threads: below the configured threads it would change results
    assert int(data["cores"]) == max_config_threads()


@pytest.mark.parametrize("name", SLURM_PROFILES)
def test_profiles_name_existing_rules_and_keep_per_job_sizes(name):
    data = load(PROFILES[name])
    rules = workflow_rules()
    named = set(data.get("set-resources", {})) | set(data.get("set-threads", {}))
    assert named <= rules, f"unknown rules {named - rules}; the workflow has {sorted(rules)}"
    for rule in SIZED_BY_WORKFLOW & set(data.get("set-resources", {})):
        # a constant here would replace the per-job wall time (noise batches, CNN panel) of config `resources`
        assert not {"runtime", "mem_mb"} & set(data["set-resources"][rule]), rule


def test_gpu_profile_asks_for_gpus_only_for_training(tmp_path):
    data = load(PROFILES["slurm-gpu"])
    assert "gres" not in PROFILES["slurm-gpu"].read_text().replace("# ", "")  # one request style: --gpus
    assert "gpu" not in data["default-resources"] and "gres" not in data["default-resources"]
    # the CUDA build and device cuda: a job that cannot use CUDA stops with the reason instead of computing
    # on the CPU while holding a GPU; torch_env gpu makes every teacher and batch job ask for one GPU
    assert data["config"] == {"torch_env": "gpu", "device": "cuda"}
    cmd = [sys.executable, "-m", "snakemake", "fig2", "--dry-run", "--nolock", "--workflow-profile", "none",
           "--configfile", "config/quick.yaml", "--config", "torch_env=gpu", "device=cuda",
           f"results_dir={tmp_path / 'results'}", f"logs_dir={tmp_path / 'logs'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    jobs = re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", proc.stdout, re.S | re.M)
    gpu = {name.split("_")[0]: "gpu=1" in block for name, block in jobs}
    assert gpu.pop("teachers") and gpu.pop("batch")  # sbatch --gpus=1
    assert not any(gpu.values()), gpu  # data, sheet, merge and plot jobs ask for no GPU


def test_cpu_profile_asks_for_no_gpu():
    data = load(PROFILES["slurm-cpu"])
    text = yaml.safe_dump(data)
    assert "gpu" not in text and "gres" not in text


@pytest.mark.parametrize("name", ["default", *SLURM_PROFILES])
def test_workflow_dry_run_with_profile(name, tmp_path):
    """The workflow accepts the profile: resources, groups and executor settings resolve for every job."""
    if not (REPO / "Snakefile").is_file() or not (REPO / "config" / "quick.yaml").is_file():
        pytest.skip("the workflow is not there")
    if name != "default" and not have_slurm_plugin():
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    cmd = [sys.executable, "-m", "snakemake", "all", "--dry-run", "--quiet", "all", "--nolock",
           "--workflow-profile", f"profiles/{name}", "--configfile", "config/quick.yaml"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


# -------------------------------------------------------------------------------------------- conda envs


def test_envs_exist():
    assert ENVS, "no envs/*.yaml"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_is_pinned_conda_forge(path):
    env = load(path)
    assert env["channels"][0] == "conda-forge"
    assert set(env["channels"]) <= {"conda-forge", "nodefaults"}, "conda-forge only (no defaults channel)"
    deps = env["dependencies"]
    assert deps and all(isinstance(d, str) for d in deps), "pip sections are not allowed"
    for dep in deps:
        # name=version[=build]: every package pinned at least to a minor version
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+=\d+(\.[\d*]+)+(=\S+)?", dep), f"{path.name}: {dep!r} is not pinned"


def torch_spec(path: Path) -> str | None:
    deps = load(path)["dependencies"]
    return next((d for d in deps if re.match(r"pytorch(-cpu|-gpu)?=", d)), None)


def test_torch_envs_pin_the_tested_pytorch():
    pinned = re.search(r'"torch==([\d.]+)"', (REPO / "pyproject.toml").read_text())[1]
    torch_envs = [p for p in ENVS if torch_spec(p)]
    assert torch_envs, "no env provides pytorch"
    for path in torch_envs:
        assert torch_spec(path).split("=")[1] == pinned, f"{path.name}: {torch_spec(path)} vs torch=={pinned}"


def cuda_envs() -> list[Path]:
    return [p for p in ENVS if re.search(r"gpu|cuda", p.stem)]


def test_cpu_torch_env_is_a_cpu_build():
    cpu = [p for p in ENVS if torch_spec(p) and p not in cuda_envs()]
    assert cpu, "no CPU torch env"
    for path in cpu:
        spec = torch_spec(path)
        assert spec.startswith("pytorch-cpu=") or spec.endswith("=cpu*") or "=cpu_" in spec, spec


def test_gpu_env_asks_for_cuda_explicitly():
    """conda solves on a login node without a GPU, where it would pick the CPU build; the file must ask
    for the CUDA build itself (pytorch-gpu, or a cuda* build string) and name the CUDA version."""
    if not cuda_envs():
        pytest.skip("no envs/*gpu*.yaml yet")
    for path in cuda_envs():
        env = load(path)
        spec = torch_spec(path)
        assert spec and (spec.startswith("pytorch-gpu=") or re.search(r"=cuda\d*\*", spec)), spec
        assert any(d.startswith("cuda-version=") for d in env["dependencies"]), "pin cuda-version"
        assert "CONDA_OVERRIDE_CUDA" in path.read_text(), "document CONDA_OVERRIDE_CUDA for login nodes"


def test_every_job_rule_names_its_conda_env():
    """Rules that run a command (shell/script) say which env they run in; aggregate targets need none."""
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        blocks = re.split(r"^(?=\s*(?:rule\b|use rule\b))", path.read_text(), flags=re.M)
        for block in blocks:
            if re.match(r"\s*rule\b", block) and re.search(r"^\s+(shell|script):", block, re.M):
                name = re.match(r"\s*rule\s*(\w*)", block)[1] or "(dynamic)"
                assert re.search(r"^\s+conda:", block, re.M), f"{path.name}: rule {name} has no conda:"
                for env in re.findall(r'conda:\s*\n\s*f?"([^"]+)"', block):
                    assert (path.parent / env).resolve().is_file(), f"{path.name}: {env} does not exist"
