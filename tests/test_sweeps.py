"""The sweeps as job lists: what each sweep script lists, how the runner skips finished work, resumes
started work, keeps every log and stays off a job another process holds, the SLURM array running
the same list; and (marked slow) every sweep end to end on tiny settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from lth import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


def env_with(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHON=PYTHON, TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    env.pop("SLURM_ARRAY_TASK_ID", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def sh(command: list[str], cwd, **env) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env_with(**env), capture_output=True, text=True, timeout=3000)


def listed(path) -> list[sweep.Job]:
    return sweep.read_jobs(str(path))


def flag(job: sweep.Job, name: str) -> str | None:
    command = job.command
    return command[command.index(name) + 1] if name in command else None


# -- what each sweep lists ---------------------------------------------------------------------------

def test_classification_sweep_lists_every_curve_and_control_per_seed(tmp_path):
    tickets = tmp_path / "pt_imp"
    tickets.mkdir()
    for level in range(3):
        (tickets / f"ticket_{level:02d}.pt").write_bytes(b"")
    result = sh([os.path.join(ROOT, "sweeps", "classification.sh")], tmp_path, SWEEP_MODE="list", SEEDS="0 1",
                ROUNDS=3, OUT="out", PRETRAINED="a=wa.pt b=wb.pt", PT_TICKETS=f"a={tickets} c=nowhere",
                EXTRA="--epochs 1")
    assert result.returncode == 0, result.stderr
    assert "PRETRAINED has no weights named 'c'" in result.stderr
    jobs = listed(tmp_path / "out" / "jobs.jsonl")
    training = sweep.train_jobs(jobs)
    names = {job.name for job in training}
    for seed in (0, 1):
        for curve in ("imp_pt_trans_a", "random_pt_trans_a", "imp_pt_trans_b", "random_pt_trans_b", "imp_lt",
                      "random_lt", "imp_rewind_lt", "random_rewind_lt", "transfer_a_r0", "transfer_a_r1",
                      "reversed_a_r1", "reinit_a_r2"):
            assert f"{curve}_s{seed}" in names
    assert len(training) == 2 * (8 + 1 + 3 * 2)  # no reversed or re-init of ticket 0 (it keeps every weight)
    by_name = {job.name: job for job in training}
    assert all(job.command[0] == PYTHON and flag(job, "--seed") == job.name[-1] and flag(job, "--epochs") == "1"
               for job in training)
    assert "--random_prune" in by_name["random_rewind_lt_s1"].command and flag(by_name["random_rewind_lt_s1"],
                                                                               "--prune_type") == "rewind_lt"
    reinit, reverse = by_name["reinit_a_r2_s0"], by_name["reversed_a_r2_s0"]
    assert "--pretrained" not in reinit.command and flag(reinit, "--mask_dir").endswith("ticket_02.pt")
    assert "--reverse_mask" in reverse.command and flag(reverse, "--pretrained") == "wa.pt"
    reports = [job for job in jobs if job.stage == sweep.REPORT]
    assert [job.name for job in reports] == ["report", "report_a", "report_b"]


def test_digits_sweep_lists_a_stand_in_then_the_grid_with_a_valid_rewind_epoch(tmp_path):
    result = sh([os.path.join(ROOT, "sweeps", "digits.sh")], tmp_path, SWEEP_MODE="list", SEEDS="0 1 2",
                OUT="sweep_digits")
    assert result.returncode == 0, result.stderr
    standin = listed(tmp_path / "sweep_digits" / "pretraining_jobs.jsonl")
    grid = sweep.train_jobs(listed(tmp_path / "sweep_digits" / "jobs.jsonl"))
    assert [job.name for job in standin] == ["pretraining"] and flag(standin[0], "--prune_type") == "pt"
    # per seed: IMP and random pruning for pt_trans, lt and rewind_lt; ticket 0 transferred; tickets 1
    # and 2 transferred, reversed and re-initialised (27 runs before: no re-init, random only for pt_trans)
    assert len(grid) == 3 * (3 * 2 + 1 + 2 * 3)
    rewind = [job for job in grid if flag(job, "--prune_type") == "rewind_lt"]
    assert rewind and all(flag(job, "--rewind_epoch") == "1" for job in rewind)  # was 0: rejected at run 4
    assert all(flag(job, "--rate") == "0.5" for job in grid if job.type == "rounds")
    transfer = next(job for job in grid if job.name == "transfer_standin_r2_s1")
    assert transfer.needs == [os.path.join("sweep_digits_pretraining", "ticket_02.pt")]  # waits for the stand-in
    assert "--array=0-38" in result.stdout and "--array=0-0" in result.stdout  # the SLURM lines


def test_detection_sweeps_list_one_job_per_seed_for_imp_and_per_level_otherwise(tmp_path):
    flags = ["--dataset", "digits", "--epochs", "1"]
    imp = sh(["sh", os.path.join(ROOT, "Detection", "TicketSH", "imp_moco.sh"), "1", *flags], tmp_path,
             SWEEP_MODE="list", SEEDS="3 4", OUT=tmp_path, JOBS=tmp_path / "imp.jsonl")
    assert imp.returncode == 0, imp.stderr
    jobs = sweep.train_jobs(listed(tmp_path / "imp.jsonl"))
    assert [(job.name, job.first, job.last) for job in jobs] == [("imp_moco_s3_r0-18", 0, 18), ("imp_moco_s4_r0-18", 0, 18)]
    assert jobs[0].env == {"CUDA_VISIBLE_DEVICES": "1"} and flag(jobs[1], "--seed") == "4"
    assert flag(jobs[0], "--save_dir") == os.path.join(str(tmp_path), "seed3_moco_imp_ckpt")
    random = sh(["sh", os.path.join(ROOT, "Detection", "random", "07_random_moco131415.sh"), "", *flags], tmp_path,
                SWEEP_MODE="list", OUT=tmp_path, JOBS=tmp_path / "random.jsonl")
    jobs = listed(tmp_path / "random.jsonl")
    assert [job.name for job in jobs] == ["random_moco_s10_13", "random_moco_s10_14", "random_moco_s10_15", "report_moco"]
    assert jobs[0].env == {} and flag(jobs[0], "--seed") == "10"  # SEED defaults to the original's 10
    transfer = sh(["sh", os.path.join(ROOT, "Detection", "sweep.sh"), "reversed", "simclr", "2", "3", "0"], tmp_path,
                  SWEEP_MODE="list", OUT=tmp_path, JOBS=tmp_path / "rev.jsonl", MASKROOT="masks", SEED="5")
    jobs = sweep.train_jobs(listed(tmp_path / "rev.jsonl"))
    assert [flag(job, "--mask_num") for job in jobs] == ["2", "3"] and all("--reverse_mask" in job.command for job in jobs)
    bad = sh(["sh", os.path.join(ROOT, "Detection", "sweep.sh"), "imp", "moco", "0", "1", "0", "--seed", "3"], tmp_path,
             SWEEP_MODE="list", OUT=tmp_path, JOBS=tmp_path / "bad.jsonl")
    assert bad.returncode == 2 and "SEEDS" in bad.stderr.strip().splitlines()[-1]


def test_segmentation_sweeps_take_seeds_and_python_from_the_environment(tmp_path):
    imp = sh(["bash", os.path.join(ROOT, "Segmentation", "sh", "imp_simclr.sh"), "", "--total_itrs", "4"], tmp_path,
             SWEEP_MODE="list", SEEDS="1 2", ROUNDS=5, OUT=tmp_path, JOBS=tmp_path / "imp.jsonl")
    assert imp.returncode == 0, imp.stderr
    jobs = listed(tmp_path / "imp.jsonl")
    assert [(job.name, job.type, job.rounds) for job in jobs[:2]] == [("seed1_imp_simclr", "seg_imp", 5),
                                                                     ("seed2_imp_simclr", "seg_imp", 5)]
    assert jobs[0].command[0] == PYTHON and flag(jobs[1], "--random_seed") == "2" and "--gpu_id" not in jobs[0].command
    assert flag(jobs[0], "--save_dir") == os.path.join(str(tmp_path), "seed1_imp_simclr_outbackbone")
    masks = tmp_path / "seed1_imp_simclr_outbackbone"
    masks.mkdir()
    (masks / "ticket_02.pt").write_bytes(b"")
    transfer = sh(["bash", os.path.join(ROOT, "Segmentation", "sh", "transfer_simclr.sh"), "0", str(masks)], tmp_path,
                  SWEEP_MODE="list", ROUNDS=3, KINDS="ticket reversed random", OUT=tmp_path,
                  JOBS=tmp_path / "transfer.jsonl")
    assert transfer.returncode == 0, transfer.stderr
    jobs = sweep.train_jobs(listed(tmp_path / "transfer.jsonl"))
    assert [job.name for job in jobs] == ["seed10_simclr_00", "seed10_simclr_01", "seed10_simclr_02",
                                          "seed10_simclr_reversed_01", "seed10_simclr_reversed_02",
                                          "seed10_simclr_random_01", "seed10_simclr_random_02"]
    by_name = {job.name: job for job in jobs}
    assert "--mask_dir" not in by_name["seed10_simclr_00"].command  # round 0 is dense
    assert flag(by_name["seed10_simclr_02"], "--mask_dir") == str(masks / "ticket_02.pt")  # the file that exists
    assert by_name["seed10_simclr_random_01"].needs == [str(masks / "seg_backbone_imp1.pth")]  # written by IMP
    assert "--random_prune" in by_name["seed10_simclr_random_01"].command and flag(jobs[0], "--gpu_id") == "0"


# -- the runner --------------------------------------------------------------------------------------

FAKE_IMP = r"""
import json, os, sys
args = sys.argv[1:]
folder, rounds = args[args.index("--save_dir") + 1], int(args[args.index("--rounds") + 1])
os.makedirs(folder, exist_ok=True)
with open(os.path.join(folder, "calls.txt"), "a") as handle:
    handle.write(" ".join(args) + "\n")
summary = os.path.join(folder, "summary.jsonl")
done = len(open(summary).readlines()) if os.path.exists(summary) else 0
for k in range(done, rounds):
    open(os.path.join(folder, f"{k}checkpoint.pth.tar"), "w").write("x")
    if os.environ.get("DIE_AT") == str(k):
        print(f"killed in round {k}", flush=True)
        sys.exit(1)
    with open(summary, "a") as handle:
        handle.write(json.dumps({"round": k, "remaining": 100 * 0.8 ** k}) + "\n")
print("finished", flush=True)
"""


def fake_jobs(tmp_path, count=2) -> str:
    script = tmp_path / "fake_imp.py"
    script.write_text(FAKE_IMP)
    jobs = [sweep.Job(f"imp_s{seed}", "rounds", [PYTHON, str(script), "--rounds", "3", "--save_dir", f"runs/s{seed}"],
                      str(tmp_path), f"runs/s{seed}", rounds=3) for seed in range(count)]
    path = str(tmp_path / "jobs.jsonl")
    sweep.write_jobs(jobs, path)
    return path


def main_sweep(*argv, cwd, **env) -> subprocess.CompletedProcess:
    return sh([PYTHON, os.path.join(ROOT, "main_sweep.py"), *argv], cwd, **env)


def test_a_killed_job_resumes_a_finished_one_is_skipped_and_every_log_is_kept(tmp_path):
    jobs = fake_jobs(tmp_path)
    killed = main_sweep("run", jobs, cwd=tmp_path, DIE_AT="1")
    assert killed.returncode == 1 and "job 'imp_s0' failed" in killed.stderr and "imp_s1" in killed.stderr
    assert [line.split() for line in main_sweep("status", jobs, cwd=tmp_path).stdout.splitlines()] == \
        [["0", "started", "imp_s0"], ["1", "started", "imp_s1"]]
    again = main_sweep("run", jobs, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    calls = (tmp_path / "runs" / "s0" / "calls.txt").read_text().splitlines()
    assert len(calls) == 2 and "--resume" not in calls[0] and calls[1].endswith("--resume")
    summary = (tmp_path / "runs" / "s0" / "summary.jsonl").read_text()
    assert [json.loads(line)["round"] for line in summary.splitlines()] == [0, 1, 2]
    third = main_sweep("run", jobs, cwd=tmp_path)
    assert "done already: imp_s0" in third.stdout and "done already: imp_s1" in third.stdout
    assert len((tmp_path / "runs" / "s0" / "calls.txt").read_text().splitlines()) == 2  # not run again
    assert (tmp_path / "runs" / "s0" / "summary.jsonl").read_text() == summary
    log = (tmp_path / "jobs.logs" / "imp_s0.log").read_text()
    assert log.count("=== exit status") == 2 and "killed in round 1" in log and "finished" in log  # both attempts
    assert not os.listdir(tmp_path / "jobs.locks")  # released


def test_a_job_held_by_a_live_process_is_left_alone_and_a_dead_ones_lock_is_taken_over(tmp_path):
    import socket

    jobs = fake_jobs(tmp_path, count=1)
    os.makedirs(tmp_path / "jobs.locks")
    lock = tmp_path / "jobs.locks" / "imp_s0.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": "now"}))
    held = main_sweep("run", jobs, "--index", "0", cwd=tmp_path)
    assert held.returncode == 0 and "running elsewhere" in held.stdout and not (tmp_path / "runs").exists()
    dead = subprocess.Popen([PYTHON, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": "then"}))
    taken = main_sweep("run", jobs, "--index", "0", cwd=tmp_path)
    assert taken.returncode == 0 and (tmp_path / "runs" / "s0" / "summary.jsonl").exists() and not lock.exists()


def test_the_slurm_array_runs_the_same_list_one_job_per_task(tmp_path):
    jobs = fake_jobs(tmp_path)
    lines = main_sweep("slurm", jobs, "--parallel", "4", cwd=tmp_path).stdout.splitlines()
    assert lines[0].startswith("array=$(sbatch --parsable --array=0-1%4 ") and "slurm_array.sh" in lines[0]
    assert lines[1].startswith("sbatch --dependency=afterany:$array --wrap") and "--reports" in lines[1]
    task = sh([os.path.join(ROOT, "sweeps", "slurm_array.sh"), jobs], tmp_path, SLURM_ARRAY_TASK_ID=1)
    assert task.returncode == 0, task.stderr
    assert (tmp_path / "runs" / "s1" / "summary.jsonl").exists() and not (tmp_path / "runs" / "s0").exists()
    outside = sh([os.path.join(ROOT, "sweeps", "slurm_array.sh"), jobs], tmp_path)
    assert outside.returncode != 0 and "array" in outside.stderr
    beyond = main_sweep("run", jobs, "--index", "2", cwd=tmp_path)
    assert beyond.returncode == 2 and beyond.stderr.strip() == "error: job index 2 is outside the list's 0..1"


def test_a_job_whose_input_is_missing_fails_on_one_line(tmp_path):
    jobs = fake_jobs(tmp_path, count=1)
    job = sweep.read_jobs(jobs)[0]
    job.needs = ["pretraining/ticket_02.pt"]
    sweep.write_jobs([job], jobs)
    result = main_sweep("run", jobs, "--index", "0", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: job 'imp_s0' needs 'pretraining/ticket_02.pt', which an earlier job writes: run that first"]


# -- every sweep end to end on tiny settings (minutes on 2 cores: LTH_SLOW_TESTS=1) -----------------

DET_TINY = ["--dataset", "digits", "--digits_canvas", "32", "--digits_counts", "24,8,8", "--arch", "resnet18",
            "--img_size", "32", "--batch_size", "8", "--workers", "0", "--lr_schedule", "as_meant",
            "--warmup_epochs", "0", "--lr_init", "0.01", "--print_freq", "0", "--epochs", "1", "--pretrained", "none"]
SEG_TINY = ["--dataset", "digits", "--model", "deeplabv3plus_resnet18", "--pretrained", "none", "--total_itrs", "4",
            "--val_interval", "2", "--batch_size", "8", "--val_batch_size", "135", "--cpu", "--print_interval", "0"]


def files_of(folder) -> dict:
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(folder) for f in names if f.endswith((".jsonl", ".json"))}


@pytest.mark.slow
def test_digits_sweep_end_to_end(tmp_path):
    env = dict(SEEDS="0", ROUNDS=2, EPOCHS=1, LEVELS="1", OUT="sweep_digits", EXTRA="--batch_size 256 --warmup 0")
    result = sh([os.path.join(ROOT, "sweeps", "digits.sh")], tmp_path, **env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "sweep_digits"
    text = (out / "report" / "report.md").read_text()
    for curve in ("IMP (lt)", "random pruning (lt)", "IMP (rewind_lt)", "random pruning (rewind_lt)",
                  "IMP (pt_trans from 0model_SA_best.pth.tar)", "random re-init, masks of"):
        assert curve in text
    assert (out / "report_standin" / "metric_vs_remaining.png").exists()
    before = files_of(out)
    again = sh([os.path.join(ROOT, "sweeps", "digits.sh")], tmp_path, **env)
    assert again.returncode == 0 and again.stdout.count("done already") == 1 + 6 + 3  # stand-in, IMP, level 1
    after = files_of(out)
    assert {k: v for k, v in after.items() if "report" not in k} == {k: v for k, v in before.items() if "report" not in k}


@pytest.mark.slow
def test_detection_sweeps_end_to_end_and_a_rerun_loses_no_log(tmp_path):
    env = dict(SEEDS="0", OUT=tmp_path)
    imp = sh(["sh", os.path.join(ROOT, "Detection", "sweep.sh"), "imp", "moco", "0", "1", "", *DET_TINY], tmp_path, **env)
    assert imp.returncode == 0, imp.stdout[-3000:] + imp.stderr[-3000:]
    random = sh(["sh", os.path.join(ROOT, "Detection", "sweep.sh"), "random", "moco", "1", "1", "", *DET_TINY],
                tmp_path, SWEEP_MODE="list", **env)
    assert random.returncode == 0
    jobs = str(tmp_path / "sweep_jobs" / "random_moco_1-1.jsonl")
    task = sh([os.path.join(ROOT, "sweeps", "slurm_array.sh"), jobs], tmp_path, SLURM_ARRAY_TASK_ID=0)
    assert task.returncode == 0, task.stderr[-3000:]
    assert main_sweep("run", jobs, "--reports", cwd=tmp_path).returncode == 0
    levels = (tmp_path / "report_moco" / "levels.csv").read_text()
    assert "random pruning (from random init),random" in levels and "IMP (from random init),imp" in levels
    logs = files_of(tmp_path / "seed0_moco_imp_ckpt")
    again = sh(["sh", os.path.join(ROOT, "Detection", "sweep.sh"), "imp", "moco", "0", "1", "", *DET_TINY],
               tmp_path, **env)
    assert again.returncode == 0 and "done already: imp_moco_s0_r0-1" in again.stdout
    assert files_of(tmp_path / "seed0_moco_imp_ckpt") == logs  # summary.jsonl and metrics.jsonl kept whole


@pytest.mark.slow
def test_segmentation_sweeps_end_to_end(tmp_path):
    env = dict(SEEDS="3", ROUNDS=2, OUT=tmp_path)
    imp = sh(["bash", os.path.join(ROOT, "Segmentation", "sh", "imp_imagenet.sh"), "", *SEG_TINY], tmp_path, **env)
    assert imp.returncode == 0, imp.stdout[-3000:] + imp.stderr[-3000:]
    masks = tmp_path / "seed3_imp_outbackbone"
    transfer = sh(["bash", os.path.join(ROOT, "Segmentation", "sh", "transfer_imagenet.sh"), "", str(masks), *SEG_TINY],
                  tmp_path, KINDS="random", **env)
    assert transfer.returncode == 0, transfer.stdout[-3000:] + transfer.stderr[-3000:]
    levels = (tmp_path / "report_transfer_imagenet" / "levels.csv").read_text()
    assert "random pruning (one shot to the masks' sparsity),random,miou,80.0" in levels
    again = sh(["bash", os.path.join(ROOT, "Segmentation", "sh", "imp_imagenet.sh"), "", *SEG_TINY], tmp_path, **env)
    assert again.returncode == 0 and "done already: seed3_imp_imagenet" in again.stdout
    shutil.rmtree(tmp_path, ignore_errors=True)
