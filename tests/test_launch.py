"""`vqforge launch`: the user's multitask map file, run with real `vqforge train` processes (on the CPU)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vqforge.cli import main
from vqforge.launch import LaunchError, launch

from conftest import REPO, tiny_dict


def task_config(tmp_path: Path, name: str, **train) -> Path:
    d = tiny_dict(train={"num_steps": 2, "save_interval": 2, "validation_interval": 2, **train},
                  loss={"use_gan": False})
    d["train"]["out_dir"] = str(tmp_path / "runs" / name)
    p = tmp_path / "multitask" / f"{name}.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(d))
    return p


def write_map(tmp_path: Path, mapping: dict) -> Path:
    p = tmp_path / "multitask" / "config.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(mapping, indent=2))
    return p


def test_three_tasks_one_fails_the_others_finish(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the task processes inherit it: tiny models, a shared machine
    task_config(tmp_path, "task1")
    bad = task_config(tmp_path, "task2")
    d = yaml.safe_load(bad.read_text())
    d["data"]["source"] = "files"
    d["data"]["train"] = [str(tmp_path / "no_such_videos")]  # a bad data directory
    bad.write_text(yaml.safe_dump(d))
    task_config(tmp_path, "task3")
    # the previous system's map: paths relative to the map file, -1 skips (even a file that does not exist)
    m = write_map(tmp_path, {"task1.yaml": 0, "task2.yaml": 1, "gone.json": -1, "task3.yaml": 0})
    logs = tmp_path / "logs"
    rc = main(["launch", str(m), "--cpu", "--out", str(logs), "--refresh", "0.2"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "task1.yaml: done" in out and "task3.yaml: done" in out
    assert "task2.yaml: failed (exit 2)" in out and "no_such_videos" in out
    assert "gone.json: skipped" in out
    assert "2 done, 1 failed, 1 skipped" in out
    for name in ("task1", "task3"):
        assert (tmp_path / "runs" / name / "checkpoints" / "step_00000002" / "model.safetensors").is_file()
        assert (tmp_path / "runs" / name / "model" / "model.safetensors").is_file()
        assert "finished 2 steps" in (logs / f"{name}.log").read_text()
    assert "no_such_videos" in (logs / "task2.log").read_text()
    assert not (tmp_path / "runs" / "task2" / "checkpoints").exists()
    rec = json.loads((logs / "summary.json").read_text())
    assert [(t["task"], t["state"]) for t in rec["tasks"]] == [
        ("task1.yaml", "done"), ("task2.yaml", "failed"), ("gone.json", "skipped"), ("task3.yaml", "done")]
    assert rec["tasks"][0]["step"] == 2 and rec["tasks"][0]["loss"] is not None
    # the status table has the columns the user watches
    assert "task" in out and "GPU" in out and "step" in out and "loss" in out and "state" in out


def test_a_gpu_the_machine_does_not_have_is_an_error_before_anything_starts(tmp_path, capsys):
    task_config(tmp_path, "a")
    task_config(tmp_path, "b")
    m = write_map(tmp_path, {"a.yaml": 0, "b.yaml": 3})
    logs = tmp_path / "logs"
    with pytest.raises(LaunchError, match=r"task 'b.yaml' asks for GPU 3, but this machine has GPUs 0..1"):
        launch(m, out=logs, gpu_count=2, stream=io.StringIO())
    assert not logs.exists() and not (tmp_path / "runs").exists()
    # through the CLI on this machine (no GPU): exit 2, the fix named, nothing started
    assert main(["launch", str(m), "--out", str(logs)]) == 2
    err = capsys.readouterr().err
    assert "asks for GPU" in err and "--cpu" in err and "nothing was started" in err
    assert not logs.exists()


@pytest.mark.parametrize("mapping,message", [
    ({"a.yaml": "cuda:0"}, "GPU index 'cuda:0' is not an integer"),
    ({"a.yaml": -1}, "nothing to launch"),
    ({"missing.yaml": 0}, "missing.yaml does not exist"),
])
def test_bad_maps_are_errors(tmp_path, mapping, message):
    task_config(tmp_path, "a")
    with pytest.raises(LaunchError, match=message):
        launch(write_map(tmp_path, mapping), cpu=True, out=tmp_path / "logs", stream=io.StringIO())


def test_a_bad_task_config_and_two_tasks_in_one_run_dir_are_caught_up_front(tmp_path):
    task_config(tmp_path, "a")
    b = task_config(tmp_path, "b")
    d = yaml.safe_load(b.read_text())
    d["train"]["out_dir"] = str(tmp_path / "runs" / "a")
    b.write_text(yaml.safe_dump(d))
    with pytest.raises(LaunchError, match="would both train into"):
        launch(write_map(tmp_path, {"a.yaml": 0, "b.yaml": 0}), cpu=True, stream=io.StringIO())
    d["train"]["num_stepz"] = 3
    b.write_text(yaml.safe_dump(d))
    with pytest.raises(LaunchError, match=r"task 'b.yaml'.*num_stepz"):
        launch(write_map(tmp_path, {"a.yaml": 0, "b.yaml": 0}), cpu=True, stream=io.StringIO())


def test_ctrl_c_stops_every_task_and_reports_it(tmp_path):
    task_config(tmp_path, "long", num_steps=100000, save_interval=100000, validation_interval=100000)
    task_config(tmp_path, "next")
    m = write_map(tmp_path, {"long.yaml": 0, "next.yaml": 0})
    logs = tmp_path / "logs"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    # started with SIGINT ignored, as a shell starts `cmd &` from a script: the launcher must still stop on Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "vqforge", "launch", str(m), "--cpu", "--out", str(logs),
                             "--refresh", "0.2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    metrics = tmp_path / "runs" / "long" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().strip()):
        time.sleep(0.2)
    assert metrics.is_file(), "the task never started training"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)  # generous: stopping takes at most 2 grace periods + 5 s, more on a busy machine
    assert proc.returncode == 130, out
    assert "interrupted (Ctrl-C)" in out and "stopping 1 task(s): long.yaml" in out
    assert "long.yaml: stopped at step" in out and "next.yaml: not started" in out
    rec = json.loads((logs / "summary.json").read_text())
    assert rec["interrupted"] is True
    pid = rec["tasks"][0]["pid"]
    with pytest.raises(ProcessLookupError):  # the task's process is gone (stopped and reaped)
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):  # and nothing is left in its process group
        os.killpg(pid, 0)
    assert "interrupted" in (logs / "long.log").read_text()


def test_each_gpu_task_sees_only_its_gpu(tmp_path):
    """On GPUs a task runs with CUDA_VISIBLE_DEVICES=<its index> and train.device=cuda (its only visible card)."""
    from vqforge.launch import Task, _command, prepare

    task_config(tmp_path, "a")
    task_config(tmp_path, "b")
    tasks = [Task("a.yaml", tmp_path / "multitask" / "a.yaml", 1), Task("b.yaml", tmp_path / "multitask" / "b.yaml", 0)]
    prepare(tasks, cpu=False, overrides=["train.num_steps=5"], gpu_count=2)  # indices 0 and 1 exist
    assert tasks[0].total_steps == 5 and tasks[0].run_dir == (tmp_path / "runs" / "a").resolve()
    cmd, env = _command(tasks[0], False, ["train.num_steps=5"])
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert cmd[-6:] == ["train", str(tasks[0].config), "--set", "train.num_steps=5", "--set", "train.device=cuda"]
    cmd, env = _command(tasks[1], True, [])
    assert env["CUDA_VISIBLE_DEVICES"] == "" and cmd[-2:] == ["--set", "train.device=cpu"]
