"""Hostile workflow configs and faults (issue #16): what the dry run can know fails `snakemake -n`
with one line naming the key; a run's numbers do not depend on --cores; the training jobs discard a
stale resume state and stop with their Snakemake; the runtime table counts every attempt."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import signal
import subprocess
import time

import pytest
from snakemake.utils import validate
from workflow_helpers import ROOT, SNAKEMAKE, load_test_config, snakemake, write_config

from planner import grid
from planner.configs import GridError
from planner.layout import Run

SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")


def validated(config: dict) -> dict:
    config = copy.deepcopy(config)
    validate(config, SCHEMA)
    return config


def cct_train_size():
    """The workflow's counter: a data section -> its training images (cct.data.base.train_size)."""
    from cct.config import from_dict
    from cct.data.base import train_size

    return lambda data: train_size(from_dict({"data": dict(data)}).data)


def _voc_tree(root):
    spec = importlib.util.spec_from_file_location("cct_test_layouts", ROOT / "tests" / "package" / "layouts.py")
    layouts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layouts)
    return layouts.voc_tree(root, train=6, extra=4, val=3)


@pytest.fixture
def tiny_dir(tmp_path):
    write_config(tmp_path, load_test_config("tiny"))
    return tmp_path


def error_line(proc) -> str:
    text = proc.stdout + proc.stderr
    lines = [line for line in text.splitlines() if line.startswith("Invalid config: ")]
    assert proc.returncode != 0 and len(lines) == 1, text[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------------------------
# What the dry run can know


def test_dry_run_fails_for_a_missing_data_root(tiny_dir):
    write_config(tiny_dir, {"datasets": {"voc": {"cct": {"data": {"dataset": "voc"}}, "label_counts": [60]}},
                            "settings": {"label_fraction": {"datasets": ["voc"]},
                                         "perturbation_ablation": {"enabled": False}}}, "voc.yaml")
    proc = snakemake(tiny_dir, "-n", "--configfile", "voc.yaml", "--config", f"data_root={tiny_dir / 'nope'}")
    line = error_line(proc)
    assert "data_root:" in line and str(tiny_dir / "nope") in line and "not found" in line
    (tiny_dir / "file").write_text("x")
    proc = snakemake(tiny_dir, "-n", "--configfile", "voc.yaml", "--config", f"data_root={tiny_dir / 'file'}")
    assert "is a file, not a folder" in error_line(proc)
    assert not (tiny_dir / "results").exists()


def test_dry_run_fails_for_a_missing_dataset_root_naming_its_key(tmp_path):
    config = validated({"datasets": {"cs": {"cct": {"data": {"dataset": "cityscapes", "root": str(tmp_path / "x")}},
                                            "label_counts": [10]}},
                        "settings": {"perturbation_ablation": {"enabled": False}}})
    with pytest.raises(GridError, match=r"datasets\.cs\.cct\.data\.root: .*x not found"):
        grid.check_config(config)


def test_dry_run_fails_for_label_counts_above_the_dataset_size(tiny_dir):
    """The embedded dataset has 1,000 training images."""
    write_config(tiny_dir, {"datasets": {"tiny": {"label_counts": [1500]}}}, "big.yaml")
    line = error_line(snakemake(tiny_dir, "-n", "--configfile", "big.yaml"))
    assert "datasets.tiny.label_counts: 1500" in line and "1000 training images" in line
    assert not (tiny_dir / "results").exists()


def test_dry_run_fails_for_a_semi_supervised_run_without_unlabelled_images():
    config = validated({"datasets": {"e": {"cct": {"data": {"dataset": "embedded"}}, "label_counts": [1000]}},
                        "settings": {"perturbation_ablation": {"enabled": False}}})
    with pytest.raises(GridError, match="needs unlabelled ones"):
        grid.check_config(config, train_size=cct_train_size())
    config["settings"]["label_fraction"]["methods"] = ["supervised"]  # every image labelled: fine
    assert grid.check_config(config, train_size=cct_train_size())


def test_dry_run_counts_a_real_datasets_training_images_from_its_files(tmp_path):
    tree = _voc_tree(tmp_path / "voc")
    size = len(tree["train"]) + len(tree["extra"])
    config = validated({"data_root": str(tree["root"]),
                        "datasets": {"voc": {"cct": {"data": {"dataset": "voc"}}, "label_counts": [size + 1]}},
                        "settings": {"perturbation_ablation": {"enabled": False},
                                     "label_fraction": {"methods": ["supervised"]}}})
    with pytest.raises(GridError, match=f"datasets.voc.label_counts: {size + 1} labelled images, but dataset 'voc' "
                                        f"has {size} training images"):
        grid.check_config(config, train_size=cct_train_size())
    config["datasets"]["voc"]["label_counts"] = [size]
    assert grid.check_config(config, train_size=cct_train_size())


def test_dry_run_names_the_setting_key_a_label_count_comes_from():
    config = validated({"datasets": {"e": {"cct": {"data": {"dataset": "embedded"}}, "label_counts": [10]}},
                        "settings": {"perturbation_ablation": {"label_count": 5000}}})
    with pytest.raises(GridError, match="settings.perturbation_ablation.label_count: 5000"):
        grid.check_config(config, train_size=cct_train_size())


# ------------------------------------------------------------------------------------------------
# The training jobs' command: threads from the config, stale state discarded, stopped with Snakemake


def test_training_threads_do_not_depend_on_cores(tiny_dir):
    """Snakemake lowers a job's {threads} to --cores; cct's train.threads must stay the configured
    count (it changes a CPU run's numbers), so --cores 1 and --cores 4 run the same trainings."""
    write_config(tiny_dir, {"resources": {"train": {"threads": 3}}}, "threads.yaml")
    commands = {}
    for cores in ("1", "4"):
        proc = snakemake(tiny_dir, "-n", "-p", "--cores", cores, "--configfile", "threads.yaml")
        assert proc.returncode == 0, proc.stderr
        commands[cores] = sorted(re.findall(r"cct train .*", proc.stdout))
        assert commands[cores] and all("--set train.threads=3 " in c for c in commands[cores]), commands[cores]
        assert all("--stale-resume restart" in c and "--stop-with $PPID" in c for c in commands[cores])
    assert commands["1"] == commands["4"]


def test_cam_jobs_threads_do_not_depend_on_cores(tmp_path):
    write_config(tmp_path, load_test_config("weak"))
    write_config(tmp_path, {"resources": {"cam": {"threads": 3}}}, "threads.yaml")
    proc = snakemake(tmp_path, "-n", "-p", "--cores", "1", "--configfile", "threads.yaml")
    assert proc.returncode == 0, proc.stderr
    cam = re.findall(r"cct cam (?:train|infer) .*", proc.stdout)
    assert len(cam) == 2 and all("--set train.threads=3 " in c for c in cam), cam
    assert "--stale-resume restart --stop-with $PPID" in next(c for c in cam if "cam train" in c)


# ------------------------------------------------------------------------------------------------
# The runtime table counts every attempt of a resumed run


def test_runtime_counts_every_attempt_of_a_resumed_run(tmp_path):
    from analysis import runtime

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    runs = {Run("toy", "label_fraction", "cct", 10, 0, 0): [100.0],  # one attempt
            Run("toy", "label_fraction", "cct", 10, 0, 1): [40.0, 25.0, 60.0]}  # killed twice, resumed
    benchmarks, metrics = [], []
    for run, attempts in runs.items():
        bench = tmp_path / "benchmarks" / "train" / f"{run.path}.tsv"
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text(header + f"{attempts[-1] + 5}\t0\t500\t1\t1\t1\t0\t0\t50\t{attempts[-1]}\n")  # last only
        m = tmp_path / "runs" / run.path / "metrics.json"
        m.parent.mkdir(parents=True, exist_ok=True)
        m.write_text(json.dumps({"attempts": [{"wall_s": s} for s in attempts]}))
        benchmarks.append(bench)
        metrics.append(m)
    rows = runtime.read_benchmarks(benchmarks, metrics).set_index("seed")
    assert rows.loc[0, "s"] == 105.0 and rows.loc[0, "attempts"] == 1
    assert rows.loc[1, "s"] == 65.0 + 40.0 + 25.0 and rows.loc[1, "attempts"] == 3
    summary = runtime.summarize(rows.reset_index(), threads=1)
    assert summary.iloc[-1]["wall_s_total"] == 105.0 + 130.0 and summary.iloc[-1]["attempts"] == 4
    assert "Attempts" in runtime.to_markdown(summary)


def test_runtime_rule_reads_the_runs_metrics(tiny_dir):
    proc = snakemake(tiny_dir, "-n", "-p", "--cores", "1")
    assert proc.returncode == 0, proc.stderr
    command = next(line for line in proc.stdout.splitlines() if "analysis.runtime" in line)
    assert "--metrics" in command and "metrics.json" in command


def test_workflow_schema_still_refuses_a_bad_resource(tiny_dir):
    write_config(tiny_dir, {"resources": {"train": {"threads": 0}}}, "bad.yaml")
    proc = snakemake(tiny_dir, "-n", "--configfile", "bad.yaml")
    assert proc.returncode != 0 and "0 is less than the minimum of 1" in proc.stdout + proc.stderr


def test_a_workflow_config_file_that_is_not_yaml_fails_before_any_job(tiny_dir):
    (tiny_dir / "bad.yaml").write_bytes(b"cct: {train: [1,\n")
    proc = snakemake(tiny_dir, "-n", "--configfile", "bad.yaml")
    assert proc.returncode != 0 and not (tiny_dir / "results").exists()


# ------------------------------------------------------------------------------------------------
# A killed Snakemake: its training stops by itself, --unlock, and the rerun resumes


def _trainings_of(folder) -> list[int]:
    """pids of the cct trainings running in ``folder`` (the workflow's working directory)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    args = handle.read().replace(b"\0", b" ").decode(errors="replace")
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if "cct train " in args and cwd == str(folder) and "snakemake" not in args and "bash" not in args:
                pids.append(int(entry))
    return pids


@pytest.mark.slow
def test_killed_snakemake_leaves_no_orphan_training_and_resumes_after_unlock(tmp_path):
    config = load_test_config("resume")
    config["cct"]["train"].update(iterations=400, eval_interval=400, checkpoint_interval=5)
    write_config(tmp_path, config)
    run = "results/runs/tiny/label_fraction/cct/10/split0/seed0"
    state = tmp_path / "results" / "resume" / "tiny" / "label_fraction" / "cct" / "10" / "split0" / "seed0" / "state.pt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE")}
    proc = subprocess.Popen([str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--cores", "1",
                             f"{run}/metrics.json"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state.is_file(), "no resume state was written"
        assert _trainings_of(tmp_path), "the training is not running"
        proc.kill()  # kill -9 of Snakemake alone: its job loses its parent
        proc.wait()
        deadline = time.monotonic() + 120
        while _trainings_of(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.5)
        orphans = _trainings_of(tmp_path)
    finally:
        for pid in _trainings_of(tmp_path):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not orphans, "the training outlived its Snakemake"
    log = (tmp_path / run / "train.log").read_text()
    assert "(--stop-with) ended" in log and "state saved" in log, log[-2000:]

    locked = snakemake(tmp_path, "--cores", "1", f"{run}/metrics.json")
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    assert snakemake(tmp_path, "--unlock").returncode == 0
    again = snakemake(tmp_path, "--cores", "1", f"{run}/metrics.json")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert re.search(r"resuming from .*state\.pt at iteration [1-9]", (tmp_path / run / "train.log").read_text())


def test_dry_run_fails_for_a_results_folder_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    config = validated({"results": str(tmp_path / "file" / "results")})
    with pytest.raises(GridError, match=r"results: .*cannot be written \(.*file is not a writable folder\)"):
        grid.check_config(config)
    grid.check_config(validated({"results": str(tmp_path / "new" / "results")}))  # a folder it can make
