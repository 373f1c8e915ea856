"""The workflow on a real SLURM: tests/cluster/slurm-up.sh brings up a single-node SLURM on 127.0.0.1
(slurmctld, slurmd, slurmdbd + MariaDB for accounting, 2 fake GPUs), then the embedded workflow at
its smallest size runs through `snakemake --profile profiles/slurm` with the partition and account
overridden, as a user would after editing the profile.

Checked: every training ran as a SLURM job asking one GPU (`sacct`: gres/gpu=1); the tables equal
those of a local run of the same config; a training cancelled with `scancel` is resubmitted by
Snakemake (`retries`) and resumes from its checkpoint (train.log: "resuming from ... at iteration k").
(`scancel --signal=TERM`: a plain scancel hangs snakemake-executor-plugin-slurm 2.8.0, see below.)

Needs root and apt (the packages are installed when missing); skipped otherwise, with the reason.
With CCT_REQUIRE_CLUSTER=1 (set by .ci/run) a missing prerequisite is a failure, not a skip.
The daemons are stopped (slurm-down.sh) whatever the outcome.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
PROFILE = ROOT / "profiles" / "slurm"
PARTITION, ACCOUNT = "cct", "local"

pytestmark = pytest.mark.cluster

# The smallest embedded grid (as tests/workflow/test_workflow_e2e.py): 3 trainings and 1 alias at 10
# labels, long enough (60 iterations, a checkpoint every 5) that a training can be cancelled midway.
# Trainings ask for one GPU, as in the paper configs; the test node advertises fake ones.
TINY = {
    "cct": {
        "model": {"encoder": "small"},
        "train": {"iterations": 60, "eval_interval": 30, "checkpoint_interval": 5, "progress": False},
    },
    "datasets": {"tiny": {"cct": {"data": {"dataset": "embedded", "domain": "a"}}, "label_counts": [10]}},
    "seeds": [0],
    "settings": {
        "label_fraction": {"methods": ["supervised", "cct"]},
        "perturbation_ablation": {"label_count": 10, "methods": ["supervised", "vat"]},
    },
    "resources": {
        "train": {"threads": 1, "mem_mb": 2000, "runtime": 10, "gpu": 1},
        "splits": {"threads": 1, "mem_mb": 1000, "runtime": 5, "gpu": 0},
        "analysis": {"threads": 1, "mem_mb": 1000, "runtime": 5, "gpu": 0},
    },
}
TRAINED = ["label_fraction/supervised", "label_fraction/cct", "perturbation_ablation/vat"]
CANCELLED = "label_fraction/cct"  # the training that is cancelled with scancel
RUN_SUFFIX = "10/split0/seed0"


def missing_prerequisite() -> str | None:
    if not sys.platform.startswith("linux"):
        return "the local SLURM needs Linux"
    if os.geteuid() != 0:
        return "needs root: slurm-up.sh installs slurm-wlm/munge/slurmdbd/mariadb-server with apt and runs the daemons"
    have_daemons = all(shutil.which(d) or os.path.exists(f"/usr/sbin/{d}")
                       for d in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd"))
    if not have_daemons and not shutil.which("apt-get"):
        return "SLURM is not installed and apt-get is unavailable to install it"
    if not shutil.which("python3"):
        return "slurm-up.sh needs python3 (to pick free ports)"
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM; yields the environment that talks to it."""
    reason = missing_prerequisite()
    if reason:
        if os.environ.get("CCT_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"CCT_REQUIRE_CLUSTER=1 but {reason}")
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, CCT_SLURM_PARTITION=PARTITION, CCT_SLURM_ACCOUNT=ACCOUNT, CCT_SLURM_GPUS="2")
    started = time.monotonic()
    up = subprocess.run([str(HERE / "slurm-up.sh"), str(state)], env=env, capture_output=True, text=True,
                        timeout=900)
    try:
        assert up.returncode == 0, f"slurm-up.sh failed:\n{up.stdout[-3000:]}\n{up.stderr[-5000:]}"
        print(f"\nslurm-up.sh: {time.monotonic() - started:.1f} s", file=sys.stderr)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE", "SLURM"))}
        env["SLURM_CONF"] = str(state / "slurm.conf")
        env["PATH"] = "/usr/sbin:/sbin:" + env.get("PATH", "")
        yield env
    finally:
        subprocess.run([str(HERE / "slurm-down.sh"), str(state)], capture_output=True, text=True, timeout=300)


def write_config(workdir: Path) -> None:
    path = workdir / "config" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))


def slurm_command() -> list[str]:
    """`snakemake --profile profiles/slurm` with the profile's default-resources, partition and account
    replaced (a command-line --default-resources replaces the profile's whole key)."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    defaults = dict(profile["default-resources"], slurm_partition=PARTITION, slurm_account=ACCOUNT)
    resources = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in defaults.items()]
    return [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--profile", str(PROFILE),
            "--default-resources", *resources, "--slurm-init-seconds-before-status-checks", "2"]


def run_dir(workdir: Path, run: str) -> Path:
    return workdir / "results" / "runs" / "tiny" / run / RUN_SUFFIX


def squeue_train_job(env: dict, run: str) -> str | None:
    """The SLURM job id of the running training of `run` (from the plugin's job comment)."""
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], env=env, capture_output=True,
                         text=True, timeout=30).stdout
    for line in out.splitlines():
        job, _, comment = line.partition("|")
        if comment == train_comment(run):
            return job.strip()
    return None


def train_comment(run: str) -> str:
    """The plugin's job comment of a training: rule_<rule>_wildcards_<wildcard values joined by _>."""
    suffix = RUN_SUFFIX.replace("split", "").replace("seed", "").split("/")
    return "rule_train_wildcards_" + "_".join(["tiny", *run.split("/"), *suffix])


def sacct(env: dict) -> list[dict]:
    fields = ["JobID", "JobName", "Comment", "Partition", "Account", "State", "ExitCode", "AllocTRES", "Elapsed"]
    out = subprocess.run(["sacct", "-X", "-P", "-n", "-a", "-S", "2020-01-01", "-o", ",".join(fields)],
                         env=env, capture_output=True, text=True, timeout=60, check=True).stdout
    return [dict(zip(fields, line.split("|"), strict=False)) for line in out.splitlines() if line]


def tables(workdir: Path) -> dict[str, pd.DataFrame | str]:
    """What must not depend on where the jobs ran: every table but the runtime one, without wall time."""
    out = {}
    for path in sorted((workdir / "results" / "tables").iterdir()):
        if path.name.startswith("runtime"):
            continue
        if path.suffix == ".csv":
            frame = pd.read_csv(path)
            out[path.name] = frame.drop(columns=[c for c in frame.columns if "wall" in c])
        else:
            out[path.name] = path.read_text()
    return out


def test_workflow_on_slurm_matches_local_and_resumes_after_scancel(slurm, tmp_path):
    env = slurm
    cluster, local = tmp_path / "cluster", tmp_path / "local"
    for workdir in (cluster, local):
        write_config(workdir)

    # the workflow on SLURM; one training is cancelled once it has written a checkpoint
    command = slurm_command()
    print("\n" + shlex.join(command), file=sys.stderr)
    state = cluster / "results" / "resume" / "tiny" / CANCELLED / RUN_SUFFIX / "state.pt"
    started = time.monotonic()
    log_path = tmp_path / "snakemake-slurm.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=cluster, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    cancelled = None
    try:
        deadline = started + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if cancelled is None and state.is_file():
                cancelled = squeue_train_job(env, CANCELLED)
                if cancelled:
                    # SIGTERM to the job's processes, as SLURM sends at the wall-time limit or on
                    # preemption: the training saves its state and exits 143, the job FAILS, Snakemake
                    # resubmits it. (A plain `scancel` leaves the job "CANCELLED by <uid>" in sacct,
                    # which snakemake-executor-plugin-slurm 2.8.0 takes for still running: it waits
                    # forever. See docs/cluster.md.)
                    subprocess.run(["scancel", "--signal=TERM", cancelled], env=env, check=True, timeout=30)
            time.sleep(0.2)
        if proc.poll() is None:  # hung: Snakemake may ignore SIGTERM while it polls
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"snakemake --profile slurm did not finish in 600 s:\n{log_path.read_text()[-5000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    cluster_s = time.monotonic() - started
    output = log_path.read_text()
    assert proc.returncode == 0, output[-6000:]
    assert cancelled, "the training to cancel was never seen running with a checkpoint"

    jobs = sacct(env)
    listing = "\n".join(" ".join(f"{j[k]:<{w}}" for k, w in (("JobID", 6), ("State", 10), ("ExitCode", 6),
                                                             ("Partition", 4), ("AllocTRES", 44), ("Elapsed", 9)))
                        + " " + j["Comment"] for j in jobs)
    print(f"snakemake --profile slurm: {cluster_s:.1f} s; sacct:\n{listing}", file=sys.stderr)

    # every training ran as a SLURM job on the partition, with one (fake) GPU; the cancelled one twice
    for run in TRAINED:
        mine = [j for j in jobs if j["Comment"] == train_comment(run)]
        assert mine, f"no SLURM job for training {run}:\n{listing}"
        assert all("gres/gpu=1" in j["AllocTRES"] and j["Partition"] == PARTITION and j["Account"] == ACCOUNT
                   for j in mine), listing
        states = [j["State"] for j in mine]
        if run == CANCELLED:
            assert states[0] == "FAILED" and states[-1] == "COMPLETED" and len(states) == 2, (cancelled, listing)
            assert cancelled == mine[0]["JobID"]
        else:
            assert states == ["COMPLETED"], listing
    # the other submitted rules ran as CPU jobs; the local rules (run_config, alias, ...) as none
    rules = {re.match(r"rule_([a-z_]+?)(_wildcards|$)", j["Comment"]).group(1) for j in jobs
             if j["Comment"].startswith("rule_")}
    assert {"train", "splits", "collect", "table", "runtime", "plot"} <= rules, rules
    assert not rules & {"run_config", "alias", "split_config"}, rules
    assert all("gres/gpu" not in j["AllocTRES"] for j in jobs
               if j["Comment"].startswith("rule_") and not j["Comment"].startswith("rule_train")), listing

    # the cancelled training was resubmitted and resumed from its checkpoint
    train_log = (run_dir(cluster, CANCELLED) / "train.log").read_text()
    assert re.search(r"resuming from .*state\.pt at iteration [1-9]\d*", train_log), train_log
    assert not state.exists()

    # the same config run locally gives the same tables (CPU, deterministic; resume is exact)
    started = time.monotonic()
    proc = subprocess.run([str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--cores", "2"], cwd=local,
                          env={k: v for k, v in env.items() if k != "SLURM_CONF"}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"local snakemake --cores 2: {time.monotonic() - started:.1f} s", file=sys.stderr)
    on_slurm, on_local = tables(cluster), tables(local)
    assert on_slurm.keys() == on_local.keys() and "label_fraction.csv" in on_slurm
    for name, table in on_local.items():
        if isinstance(table, pd.DataFrame):
            pd.testing.assert_frame_equal(on_slurm[name], table, obj=name)
        else:
            assert on_slurm[name] == table, name
