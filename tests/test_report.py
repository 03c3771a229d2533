"""main_report.py and the ticket analysis: pooling seeds, matching verdicts, controls, overlap, FLOPs, bad input."""

import csv
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import main_report
import pruning_utils
from lth import cli, report, ticket_analysis
from lth import plots

IMP_ARGS = {"dataset": "digits", "arch": "resnet18_w16", "epochs": 3, "lr": 0.05, "batch_size": 64,
            "prune_type": "lt", "random_prune": False, "rate": 0.2, "pruning_times": 3,
            "decreasing_lr": [2], "pretrained": None, "gpu": "0", "print_freq": 50}


EVAL_ARGS = {k: v for k, v in IMP_ARGS.items() if k not in ("prune_type", "random_prune", "rate", "pruning_times")}


def fake_run(folder, script="main_imp_downstream.py", rows=(), one_off=None, **args):
    """A run folder as the scripts write it: run.json plus summary.jsonl (or summary.json)."""
    os.makedirs(folder, exist_ok=True)
    base = IMP_ARGS if script == "main_imp_downstream.py" else EVAL_ARGS
    full = {**base, **args, "save_dir": str(folder)}
    record = {"args": full, "argv": [script, "--save_dir", str(folder)], "code_version": "abc123",
              "versions": {"torch": "2.x"}, "host": "box"}
    with open(os.path.join(folder, "run.json"), "w") as handle:
        json.dump(record, handle)
    if rows:
        with open(os.path.join(folder, "summary.jsonl"), "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    if one_off is not None:
        with open(os.path.join(folder, "summary.json"), "w") as handle:
            json.dump(one_off, handle)
    return str(folder)


def rounds(values, finals=None, remaining=(100.0, 80.0, 64.0)):
    finals = finals or values
    return [{"round": k, "remaining": r, "reported_acc": v, "test_acc_at_best_val": v, "final_test_acc": f}
            for k, (r, v, f) in enumerate(zip(remaining, values, finals))]


def make_report(tmp_path, *runs, extra=()):
    out = tmp_path / "report"
    args = main_report.get_args_parser().parse_args([*runs, "--out", str(out), *extra])
    main_report.main(args)
    return out


def read_levels(out):
    with open(out / "levels.csv") as handle:
        return list(csv.DictReader(handle))


# -- aggregation -----------------------------------------------------------------------------

def test_levels_are_the_mean_and_sample_std_over_seeds(tmp_path):
    fake_run(tmp_path / "runs" / "s0", rows=rounds([90.0, 91.0, 80.0], finals=[90.0, 89.0, 70.0]), seed=0)
    fake_run(tmp_path / "runs" / "s1", rows=rounds([92.0, 93.0, 84.0], finals=[92.0, 90.0, 75.0]), seed=1)
    fake_run(tmp_path / "runs" / "s2", rows=rounds([97.0, 95.0, 82.0], finals=[97.0, 94.0, 71.0]), seed=2)
    out = make_report(tmp_path, str(tmp_path / "runs"))
    rows = read_levels(out)
    assert [(r["group"], float(r["remaining"]), int(r["n"])) for r in rows] == [
        ("IMP (lt)", 100.0, 3), ("IMP (lt)", 80.0, 3), ("IMP (lt)", 64.0, 3)]
    # By hand: 90, 92, 97 -> mean 93, deviations -3, -1, 4 -> sum of squares 26 / (3 - 1) = 13.
    assert float(rows[0]["mean"]) == pytest.approx(93.0)
    assert float(rows[0]["std"]) == pytest.approx(math.sqrt(13.0), rel=1e-5)
    # 91, 93, 95 -> mean 93, std 2; finals 89, 90, 94 -> mean 91, deviations -2, -1, 3 -> 14 / 2 = 7.
    assert float(rows[1]["mean"]) == pytest.approx(93.0) and float(rows[1]["std"]) == pytest.approx(2.0)
    assert float(rows[1]["final_mean"]) == pytest.approx(91.0)
    assert float(rows[1]["final_std"]) == pytest.approx(math.sqrt(7.0), rel=1e-5)
    assert rows[2]["seeds"] == "0 1 2" and float(rows[2]["sparsity"]) == pytest.approx(36.0)
    text = (out / "report.md").read_text()
    assert "93.00 ± 3.61 (n=3)" in text and "abc123" in text and "metric_vs_remaining.png" in text
    assert (out / "metric_vs_remaining.png").stat().st_size > 1000


def test_one_seed_has_std_zero_and_new_metric_keys_and_null_are_read(tmp_path):
    rows = [{"round": 0, "remaining": 100.0, "primary_metric": "miou", "reported": 70.0, "final": 69.0,
             "reported_acc": 1.0},
            {"round": 1, "remaining": 80.0, "primary_metric": "miou", "reported": None, "final": None},
            {"round": 2, "remaining": 64.0, "primary_metric": "miou", "reported": 65.0, "final": float("nan")}]
    fake_run(tmp_path / "seg", rows=rows, seed=0)
    out = make_report(tmp_path, str(tmp_path / "seg"))
    levels = read_levels(out)
    # The null round is left out; "reported"/"final" win over "reported_acc".
    assert [(float(r["remaining"]), float(r["mean"]), float(r["std"])) for r in levels] == [(100, 70, 0), (64, 65, 0)]
    assert levels[0]["metric"] == "miou" and levels[0]["final_mean"] == "69"
    assert "(miou)" in (out / "report.md").read_text()


# -- grouping ------------------------------------------------------------------------------

def test_runs_are_pooled_only_when_they_differ_in_the_seed_alone(tmp_path):
    fake_run(tmp_path / "a", rows=rounds([90, 90, 90]), seed=0, gpu="0", print_freq=10)
    fake_run(tmp_path / "b", rows=rounds([92, 92, 92]), seed=1, gpu="1", print_freq=50)  # same experiment
    fake_run(tmp_path / "c", rows=rounds([94, 94, 94]), seed=2, lr=0.1)  # another learning rate
    fake_run(tmp_path / "d", rows=rounds([96, 96, 96]), seed=3, random_prune=True)
    fake_run(tmp_path / "e", rows=rounds([98, 98, 98]), seed=4, prune_type="rewind_lt")
    groups = report.group_runs(report.read_runs([str(tmp_path / n) for n in "abcde"]).runs)
    members = sorted(sorted(os.path.basename(r.path) for r in g.runs) for g in groups)
    assert members == [["a", "b"], ["c"], ["d"], ["e"]]
    labels = {g.label for g in groups}
    assert "IMP (rewind_lt)" in labels and "random pruning (lt)" in labels
    assert any("lr=0.05" in label for label in labels) and any("lr=0.1" in label for label in labels)
    random_group = next(g for g in groups if g.kind == "random")
    assert random_group.reference is not None and random_group.reference.runs[0].args["lr"] == 0.05


# -- matching --------------------------------------------------------------------------------

def reference_extreme(curve, dense_mean, dense_std, criterion):
    """The rule written out: the lowest remaining level whose mean is >= dense mean - std
    ('within one std') or >= dense mean ('at least dense')."""
    bound = dense_mean - (dense_std if criterion == "within_std" else 0.0)
    good = [level for level, value in curve if level < 100 and value >= bound]
    return min(good) if good else None


@pytest.mark.parametrize("curve", [
    [(80.0, 91.0), (64.0, 89.5), (51.2, 88.0), (40.96, 89.2), (32.77, 70.0)],
    [(80.0, 89.9), (64.0, 90.0), (51.2, 90.5)],
    [(80.0, 85.0), (64.0, 80.0)],
])
def test_matching_verdict_follows_the_papers_two_criteria(curve):
    dense = dense_ref([89.0, 90.0, 91.0])  # mean 90, sample std 1
    levels = [report.LevelStats(level, [value], [value], [0]) for level, value in curve]
    for criterion in ("within_std", "at_least"):
        verdict = report.matching_verdict(levels, dense, criterion)
        assert verdict.extreme == reference_extreme(curve, 90.0, 1.0, criterion)
    first = report.matching_verdict(levels, dense, "within_std")
    if curve[0][1] == 91.0:  # 51.2 fails in between: the contiguous range stops at 64
        assert first.contiguous == 64.0 and first.failing_above == [51.2]
    lower = report.matching_verdict([report.LevelStats(80.0, [0.5], [0.5], [0])],
                                    dense_ref([0.4 - 0.2 / math.sqrt(2), 0.4 + 0.2 / math.sqrt(2)]),
                                    "within_std", higher_is_better=False)
    assert lower.extreme == 80.0  # a loss of 0.5 is within one std (0.2) of 0.4 when lower is better


def dense_ref(values, label="dense"):
    return report.DenseRef(label, report.LevelStats(100.0, list(values), list(values), list(range(len(values)))),
                           "test")


def test_a_tie_with_the_dense_bound_is_not_decided_by_float_rounding():
    # 0.1 + 0.2 != 0.3 in floats: a level whose mean equals the dense mean up to rounding matches.
    dense = dense_ref([0.1 + 0.2, 0.3, 0.3 + 1e-15])
    level = report.LevelStats(80.0, [0.3, 0.3, 0.1 + 0.2 - 1e-14], [0.3] * 3, [0, 1, 2])
    assert level.mean < dense.mean  # by float rounding only
    assert report.matching_verdict([level], dense, "at_least").extreme == 80.0
    # a real difference beyond the tolerance (0.005 points) still fails
    worse = report.LevelStats(80.0, [0.29, 0.29, 0.29], [0.29] * 3, [0, 1, 2])
    assert report.matching_verdict([worse], dense, "at_least").extreme is None


def test_each_level_gets_a_welch_confidence_interval_and_one_sided_p():
    from scipy import stats

    dense = dense_ref([90.0, 90.03, 90.06])  # a 3-seed dense std of 0.03, as in the audit
    level = report.LevelStats(80.0, [89.6, 90.2, 90.1], [0] * 3, [0, 1, 2])
    test = report.test_against_dense(level, dense, higher_is_better=True)
    # The paper's rule fails the level (mean 89.97 < 90.03 - 0.03 - 0.005) ...
    assert test.ok["within_std"] is False and test.ok["at_least"] is False
    # ... Welch's one-sided test (H1: the level is worse) does not: p from scipy's own test.
    reference = stats.ttest_ind(level.values, dense.stats.values, equal_var=False, alternative="less")
    assert test.p == pytest.approx(reference.pvalue, rel=1e-9) and test.ok["welch"] is True
    # The interval written out: difference +- t(0.975, Welch-Satterthwaite df) x standard error.
    va, vb = np.var(level.values, ddof=1) / 3, np.var(dense.stats.values, ddof=1) / 3
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert test.difference == pytest.approx(89.9 + 0.2 / 3 - 90.03)
    assert test.ci == pytest.approx((test.difference - half, test.difference + half))
    clearly_worse = report.test_against_dense(report.LevelStats(64.0, [85.0, 85.5, 85.2], [0] * 3, [0, 1, 2]),
                                              dense, True)
    assert clearly_worse.p < 0.05 and clearly_worse.ok["welch"] is False
    one_seed = report.test_against_dense(report.LevelStats(51.2, [90.0], [90.0], [0]), dense, True)
    assert one_seed.p is None and one_seed.ci is None and one_seed.ok["welch"] is None  # cannot be tested
    verdict = report.verdict_of([test, clearly_worse, one_seed], "welch")
    assert verdict.extreme == 80.0 and verdict.untested == [51.2]


# -- each curve against the dense model of its own experiment --------------------------------

def pt_trans(folder, values, seed, **args):
    return fake_run(folder, rows=rounds(values), seed=seed, prune_type="pt_trans", **args)


def test_each_curve_is_judged_against_the_dense_model_of_its_own_experiment(tmp_path):
    """The audit's folder: SimCLR's curve ends 1.1 points below its own dense model but above
    ImageNet's; an lr-0.1 group 2 points below its own dense. Each must fail against its own."""
    for seed in range(3):
        pt_trans(tmp_path / f"imp_imagenet_s{seed}", [97.0 + seed * 0.1, 97.05 + seed * 0.1, 96.9 + seed * 0.1],
                 seed, pretrained="imagenet_weight.pt")
        pt_trans(tmp_path / f"imp_simclr_s{seed}", [98.0 + seed * 0.1, 96.9 + seed * 0.1, 96.8 + seed * 0.1],
                 seed, pretrained="simclr_weight.pt")
        pt_trans(tmp_path / f"imp_imagenet_lr_s{seed}", [99.0 + seed * 0.1, 97.0 + seed * 0.1, 97.0 + seed * 0.1],
                 seed, pretrained="imagenet_weight.pt", lr=0.1)
        fake_run(tmp_path / f"imp_lt_s{seed}", rows=rounds([95.0 + seed * 0.1, 95.1 + seed * 0.1, 94.0]), seed=seed)
    out = make_report(tmp_path, str(tmp_path / "imp_*"))
    results = report.analyse(report.read_runs([str(tmp_path / "imp_*")]))
    by_pretrained = {(g.runs[0].args.get("pretrained"), g.runs[0].args["lr"]): g for g in results.groups}
    imagenet = by_pretrained[("imagenet_weight.pt", 0.05)]
    simclr = by_pretrained[("simclr_weight.pt", 0.05)]
    lr = by_pretrained[("imagenet_weight.pt", 0.1)]
    lt = by_pretrained[(None, 0.05)]
    for group in (imagenet, simclr, lr, lt):
        assert group.dense.label == group.label and group.dense.rule == "its own round 0"
        assert sorted(group.dense.runs) == sorted(r.path for r in group.runs)  # its own seeds, pooled
    assert results.verdicts[imagenet.label]["within_std"].extreme == 64.0
    assert results.verdicts[simclr.label]["within_std"].extreme is None  # 1.1 below its own dense
    assert results.verdicts[lr.label]["within_std"].extreme is None  # 2 below its own dense
    assert results.verdicts[lt.label]["within_std"].extreme == 80.0
    text = (out / "report.md").read_text()
    for group in (imagenet, simclr, lr, lt):
        assert f"| {group.label} | IMP | 0, 1, 2 | 3 | flags | {group.label}: " in text  # the dense it used
        assert all(path in text for path in group.dense.runs)


def contract_run(folder, values, seed, experiment, hparams, script="main_imp_downstream.py", controls=None,
                 remaining=(100.0, 80.0, 64.0), one_off=None, **args):
    """A run written after the experiment identity landed: run.json has 'experiment' (and 'controls')."""
    path = fake_run(folder, script=script, rows=rounds(values, remaining=remaining) if values else (),
                    one_off=one_off, seed=seed, **args)
    record = json.load(open(os.path.join(path, "run.json")))
    record["experiment"] = {"id": experiment, "task": script, "hparams": hparams}
    if controls is not None:
        record["controls"] = controls
    json.dump(record, open(os.path.join(path, "run.json"), "w"))
    return path


def test_runs_with_an_experiment_id_pool_by_it_and_controls_use_their_tickets_experiment(tmp_path):
    hp = {"dataset": "digits", "arch": "resnet18_w16", "lr": 0.05, "prune_type": "lt"}
    # Flags that differ (workers, a renamed save_dir) do not matter: the id says it is one experiment.
    imp = [contract_run(tmp_path / f"imp_s{seed}", [96.0 + seed, 95.5 + seed, 90.0 + seed], seed, "a" * 16, hp,
                        workers=seed) for seed in range(2)]
    contract_run(tmp_path / "imp_lr_s0", [97.0, 96.0, 95.0], 0, "b" * 16, dict(hp, lr=0.1), lr=0.1)
    for seed in range(2):
        # As make demo's reversed masks: each seed's control starts from its own IMP run's init
        # (--pretrained IMP_s{seed}/0checkpoint.pth.tar), so the recorded ids differ; they pool.
        init = os.path.join(imp[seed], "0checkpoint.pth.tar")
        contract_run(tmp_path / f"rev_s{seed}", None, seed, "cd"[seed] * 16,
                     dict(hp, reverse_mask=True, pretrained=init), script="main_eval_downstream.py",
                     controls={"kind": "reverse_mask", "ticket": os.path.join(imp[seed], "ticket_02.pt"),
                               "ticket_experiment": "a" * 16, "ticket_seed": seed},
                     mask_dir=os.path.join(imp[seed], "ticket_02.pt"), reverse_mask=True, pretrained=init,
                     one_off={"remaining": 36.0, "test_acc_at_best_val": 60.0 + seed, "final_test_acc": 60.0})
    fake_run(tmp_path / "legacy_s5", rows=rounds([94.0, 94.0, 94.0]), seed=5, prune_type="rewind_lt")
    out = make_report(tmp_path, str(tmp_path / "imp_*"), str(tmp_path / "rev_*"), str(tmp_path / "legacy_s5"))
    results = report.analyse(report.read_runs([str(tmp_path / "imp_*"), str(tmp_path / "rev_*"),
                                               str(tmp_path / "legacy_s5")]))
    groups = {g.label: g for g in results.groups}
    main = next(g for g in results.groups if g.experiments == ["a" * 16])
    assert len(main.runs) == 2 and main.rule == "experiment id"
    reversed_group = next(g for g in results.groups if g.kind == "reversed")
    assert reversed_group.rule == "experiment id" and reversed_group.reference is main
    assert sorted(run.seed for run in reversed_group.runs) == [0, 1]
    assert reversed_group.dense.label == main.label
    assert reversed_group.dense.rule == "the dense model of the ticket's experiment"
    assert reversed_group.dense.experiments == ["a" * 16]
    assert groups["IMP (rewind_lt)"].rule == "flags"
    text = (out / "report.md").read_text()
    assert "experiment " + "a" * 16 in text and "Groups marked 'flags'" in text and "Groups marked 'experiment id'" in text


def test_copied_runs_are_refused(tmp_path, capsys):
    import shutil

    for seed in range(2):
        fake_run(tmp_path / "runs" / f"s{seed}", rows=rounds([90.0 + seed, 89.0 + seed, 88.0 + seed]), seed=seed)
    shutil.copytree(tmp_path / "runs" / "s1", tmp_path / "runs" / "s1_copy")
    code, err = run_cli([str(tmp_path / "runs"), "--out", str(tmp_path / "o1")], capsys)
    assert code == 2 and "holds seed 1 twice at 100 % remaining" in err and "s1_copy" in err
    record = json.load(open(tmp_path / "runs" / "s1_copy" / "run.json"))
    record["args"]["seed"] = 7  # the same results under another seed: still a copy
    json.dump(record, open(tmp_path / "runs" / "s1_copy" / "run.json", "w"))
    code, err = run_cli([str(tmp_path / "runs"), "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "hold the same logs" in err and "\n" not in err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


DET_ARGS = {"dataset": "digits", "arch": "resnet18_w16", "img_size": 32, "epochs": 2, "batch_size": 8, "lr_init": 0.01,
            "imp_type": "moco", "rate": 0.2, "pretrained": "weight/moco.pth.tar", "seed": 10, "workers": 0}


def det_row(k, ap, **extra):
    return {"round": k, "remaining": round(100 * 0.8 ** k, 4), "primary_metric": "ap", "higher_is_better": True,
            "reported": ap, "final": ap, **extra}


def raw_run(folder, argv0, args, rows=(), resumed=()):
    os.makedirs(folder, exist_ok=True)
    record = {"args": args, "argv": [argv0], "code_version": "abc", "versions": {}, "host": "box"}
    if resumed:
        record["resumed"] = [{"args": {**args, **r}, "argv": [argv0]} for r in resumed]
    json.dump(record, open(os.path.join(folder, "run.json"), "w"))
    if rows:
        with open(os.path.join(folder, "summary.jsonl"), "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    return str(folder)


def test_detection_imp_and_its_random_control_are_one_task_and_a_missing_round_is_noted(tmp_path):
    imp = raw_run(tmp_path / "seed10_moco_imp_ckpt", "train_imp.py", {**DET_ARGS, "imp_num": 0, "rounds": 1},
                  rows=[det_row(0, 30.0), det_row(1, 29.5), det_row(3, 20.0)],  # round 2's row is missing
                  resumed=[{"imp_num": k} for k in (1, 2, 3)])
    for k, ap in ((1, 25.0), (3, 12.0)):
        raw_run(tmp_path / "seed10_moco_random_ckpt" / f"model{k}", "train_random.py", {**DET_ARGS, "imp_num": k},
                rows=[det_row(k, ap, random_prune=True, imp_num=k)])
    out = make_report(tmp_path, imp, str(tmp_path / "seed10_moco_random_ckpt"))
    results = report.analyse(report.read_runs([imp, str(tmp_path / "seed10_moco_random_ckpt")]))
    imp_group, random_group = results.groups
    assert (imp_group.kind, random_group.kind) == ("imp", "random") and imp_group.runs[0].task == \
        "detection on digits (ap)"
    assert random_group.reference is imp_group and random_group.dense.label == imp_group.label
    assert [s.level for s in results.stats[random_group.label]] == [80.0, 51.2]
    text = (out / "report.md").read_text()
    assert "3 of 4 rounds in summary.jsonl (rounds 2 missing)" in text and "AP (%)" in text
    assert "### random pruning (from moco) vs IMP (from moco)" in text


def test_detection_runs_with_the_originals_ignored_mask_dir_and_last_evaluation_rows(tmp_path):
    """Detection's IMP and random-pruning scripts accept the original's --mask_dir and ignore it
    (run.json: mask_dir_ignored): that flag makes neither a dense/transfer run nor a mask source. On
    VOC the rows report the last evaluation (reported_at), and the report says so."""
    ignored = {**DET_ARGS, "mask_dir": "somewhere/backbone_imp3.pth", "mask_dir_ignored": True}
    at = {"reported_at": "last evaluation (the validation split is the test split)"}
    imp = raw_run(tmp_path / "seed10_moco_imp_ckpt", "pytest", {**ignored, "imp_num": 0, "rounds": 2},
                  rows=[det_row(0, 30.0, **at), det_row(1, 29.5, **at)])
    control = raw_run(tmp_path / "seed10_moco_random_ckpt" / "model1", "pytest", {**ignored, "imp_num": 1,
                                                                                 "mask_dir": None},
                      rows=[det_row(1, 25.0, random_prune=True, imp_num=1, **at)])
    out = make_report(tmp_path, imp, str(tmp_path / "seed10_moco_random_ckpt"))
    results = report.analyse(report.read_runs([imp, control]))
    imp_group, random_group = results.groups
    assert (imp_group.kind, random_group.kind) == ("imp", "random")
    assert (imp_group.label, random_group.label) == ("IMP (from moco)", "random pruning (from moco)")
    assert [s.level for s in results.stats[imp_group.label]] == [100.0, 80.0]
    assert random_group.reference is imp_group and random_group.dense.label == imp_group.label
    text = (out / "report.md").read_text()
    assert "AP (%) at the last evaluation (the validation split is the test split)" in text
    assert "at the best evaluation" not in text


def test_segmentation_runs_are_read_from_the_rows_of_their_save_dir(tmp_path):
    """Segmentation keeps one summary.jsonl per --save_dir and each run (round) in SAVE_DIR/EXP
    with its run.json: per-round IMP runs are one curve, their random-pruning control another."""
    seg = {"dataset": "digits", "model": "deeplabv3plus_resnet18", "pretrained": "none", "total_itrs": 4,
           "random_seed": 3, "seed": 3, "lr": 0.01}
    imp_dir = tmp_path / "seed3_imp_outbackbone"
    rows = []
    for k, miou in enumerate((50.0, 49.0, 40.0)):
        raw_run(imp_dir / f"seed3_imp_imagenet_{k}", "main_imp_imagenet.py",
                {**seg, "exp": f"seed3_imp_imagenet_{k}", "imp_num": k, "imp_rounds": 19, "rate": 0.2})
        rows.append({**det_row(k, miou), "primary_metric": "miou", "exp": f"seed3_imp_imagenet_{k}", "kind": "imp"})
    raw_run(imp_dir / "seed3_imp_imagenet_3", "main_imp_imagenet.py",  # started round 3, no row yet
            {**seg, "exp": "seed3_imp_imagenet_3", "imp_num": 3, "imp_rounds": 19, "rate": 0.2})
    (imp_dir / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    transfer = tmp_path / "checkpoints"
    rows = []
    for k, miou in ((1, 45.0), (2, 30.0)):
        exp = f"seed3_imagenet_random_{k:02d}"
        raw_run(transfer / exp, "main_transfer_imagenet.py", {**seg, "exp": exp, "random_prune": True,
                                                              "reverse_mask": False,
                                                              "mask_dir": str(imp_dir / f"seg_backbone_imp{k}.pth")})
        rows.append({**det_row(k, miou), "round": 0, "primary_metric": "miou", "exp": exp, "kind": "random pruning"})
    (transfer / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = make_report(tmp_path, str(imp_dir), str(transfer))
    results = report.analyse(report.read_runs([str(imp_dir), str(transfer)]))
    imp_group, random_group = results.groups
    assert [s.level for s in results.stats[imp_group.label]] == [100.0, 80.0, 64.0]
    assert len(imp_group.runs) == 3 and random_group.reference is imp_group
    assert random_group.dense.label == imp_group.label and random_group.dense.runs == [
        str(imp_dir / "seed3_imp_imagenet_0")]
    assert results.verdicts[imp_group.label]["within_std"].extreme is None  # 49 < 50 (one seed: std 0)
    text = (out / "report.md").read_text()
    assert "mIoU (%)" in text and "no round finished yet" in text
    assert "seed3_imp_imagenet_3: unfinished: no round finished yet" in text


# -- controls -----------------------------------------------------------------------------------

def test_reversed_masks_are_shown_at_their_own_share_and_compared_with_their_ticket(tmp_path):
    imp_values = {0: [96.0, 95.0, 90.0], 1: [97.0, 96.0, 91.0], 2: [95.0, 94.0, 92.0]}
    reversed_values = {0: 60.0, 1: 64.0, 2: 66.0}
    for seed in range(3):
        imp = fake_run(tmp_path / f"imp_s{seed}", rows=rounds(imp_values[seed], remaining=(100.0, 80.0, 64.0, 51.2)),
                       seed=seed)
        fake_run(tmp_path / f"rev_s{seed}", script="main_eval_downstream.py", seed=seed,
                 mask_dir=os.path.join(imp, "ticket_02.pt"), reverse_mask=True,
                 pretrained=os.path.join(imp, "0checkpoint.pth.tar"),
                 one_off={"remaining": 36.0, "reverse_mask": True, "test_acc_at_best_val": reversed_values[seed],
                          "final_test_acc": reversed_values[seed]})
    out = make_report(tmp_path, str(tmp_path / "imp_s*"), str(tmp_path / "rev_s*"))
    rows = {(r["group"], float(r["remaining"])): r for r in read_levels(out)}
    reversed_row = rows[("reversed masks of IMP (lt)", 36.0)]  # keeps 36 %: shown there, paired with 64 %
    assert int(reversed_row["n"]) == 3 and reversed_row["reference"] == "IMP (lt)"
    assert float(reversed_row["ticket_remaining"]) == 64.0 and reversed_row["dense"] == "IMP (lt)"
    # Welch's t by hand: IMP at 64 %: 90, 91, 92 (mean 91, var 1); reversed 60, 64, 66 (mean 63.33, var 9.33).
    t = (91.0 - 190.0 / 3) / math.sqrt(1.0 / 3 + (28.0 / 3) / 3)
    results = report.analyse(report.read_runs([str(tmp_path / "imp_s*"), str(tmp_path / "rev_s*")]))
    comparison = results.controls["reversed masks of IMP (lt)"][0]
    assert comparison.level == 36.0 and comparison.reference.level == 64.0
    assert comparison.t == pytest.approx(t, rel=1e-6)
    assert 0 < comparison.p < 0.05
    text = (out / "report.md").read_text()
    assert "### reversed masks of IMP (lt) vs IMP (lt)" in text and "| 36 | 64 |" in text
    assert "| reversed masks of IMP (lt) | 36 (reverse of 64) | 3 |" in text


def test_no_t_test_with_one_seed_on_a_side():
    assert report.welch([1.0, 2.0], [3.0]) == (None, None)


# -- mask overlap, kernels, FLOPs -----------------------------------------------------------------

def random_masks(seed, shares=(0.3, 0.6)):
    generator = torch.Generator().manual_seed(seed)
    return {f"l{i}.weight_mask": (torch.rand(8, 4, 3, 3, generator=generator) < share).float()
            for i, share in enumerate(shares)}


def test_overlap_of_a_mask_with_itself_is_one_and_with_its_reverse_zero():
    masks = random_masks(0)
    assert ticket_analysis.mask_iou(masks, masks) == 1.0
    assert ticket_analysis.mask_iou(masks, pruning_utils.reverse_mask(masks)) == 0.0


def test_random_overlap_is_what_random_masks_of_the_same_layer_shares_give():
    a, b = random_masks(0, (0.2, 0.7)), random_masks(1, (0.5, 0.4))
    expected = ticket_analysis.random_mask_iou(a, b)
    # Monte Carlo: shuffle each layer of both masks (same shares) and average the IoU.
    generator = torch.Generator().manual_seed(2)
    draws = []
    for _ in range(400):
        shuffle = {k: m.flatten()[torch.randperm(m.numel(), generator=generator)].view_as(m) for k, m in a.items()}
        draws.append(ticket_analysis.mask_iou(shuffle, b))
    assert expected == pytest.approx(sum(draws) / len(draws), abs=0.01)


def test_fully_pruned_kernels_per_block():
    mask = torch.ones(2, 2, 3, 3)
    mask[0, 0] = 0  # one kernel fully pruned
    mask[1, 1, 0, 0] = 0  # one weight of another: not a pruned kernel
    masks = {"layer1.0.conv1.weight_mask": mask, "layer2.0.conv1.weight_mask": torch.zeros(1, 4, 3, 3),
             "layer2.0.downsample.0.weight_mask": torch.zeros(4, 4, 1, 1)}
    assert ticket_analysis.pruned_kernel_share(masks) == {"layer1": 25.0, "layer2": 100.0}


def test_flops_and_parameters_of_a_known_small_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(4, 2, 3, stride=2, padding=1, bias=True), nn.Flatten(), nn.Linear(2 * 3 * 3, 5))
    mask = torch.zeros(2, 4, 3, 3)
    mask.view(-1)[:10] = 1
    costs = {c.layer: c for c in ticket_analysis.layer_costs(model, {"2.weight_mask": mask}, (3, 5, 5))}
    # conv 0: 5x5 outputs x (4 x 3 x 3 x 3 = 108 weights) = 2700 MACs; dense (no mask).
    assert (costs["0"].dense_flops, costs["0"].nonzero_flops, costs["0"].dense_params) == (2700, 2700, 108)
    # conv 2: 3x3 outputs x 72 weights = 648 MACs dense; 10 kept weights -> 90; params + 2 biases.
    assert (costs["2"].dense_flops, costs["2"].nonzero_flops) == (648, 90)
    assert (costs["2"].dense_params, costs["2"].nonzero_params) == (74, 12)
    assert (costs["4"].dense_flops, costs["4"].dense_params) == (90, 95)


def tick_labels(values, width=7.6):
    """The x tick labels the report's axis draws for ``values``: (text, pixel extent) of the labelled
    ticks, and the texts of the minor ticks."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, 4.4))
    ax.plot(values, [1.0] * len(values), "o")
    plots._remaining_axis(ax, values)
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    major = [(t.get_text(), t.get_window_extent(renderer)) for t in ax.get_xticklabels() if t.get_text()]
    minor = [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
    plt.close(fig)
    return major, minor


@pytest.mark.parametrize("count", [10, 19])
def test_every_level_of_an_imp_curve_is_labelled_without_overlap(count):
    levels = [100 * 0.8 ** k for k in range(count)]
    major, minor = tick_labels(levels)
    assert [text for text, _ in major] == [f"{v:.3g}" for v in levels] and minor == []
    boxes = sorted((box for _, box in major), key=lambda box: box.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))  # no two labels overlap


def test_crowded_levels_keep_a_readable_subset():
    levels = [100 * 0.8 ** k for k in range(20)] + [100 - 100 * 0.8 ** k for k in range(1, 20)]
    major, minor = tick_labels(levels)
    texts = [text for text, _ in major]
    assert texts[0] == "100" and texts[-1] == f"{100 * 0.8 ** 19:.3g}" and minor == []
    assert set(texts) <= {f"{v:.3g}" for v in levels} and len(texts) >= 12
    boxes = sorted((box for _, box in major), key=lambda box: box.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))


def test_kernel_maps_layer_axis_and_overlap_labels(tmp_path, monkeypatch):
    mask = torch.ones(2, 3, 3, 3)
    mask[0, 1] = 0  # kernel (0, 1) pruned entirely
    mask[1, 2, 0, :2] = 0  # kernel (1, 2) keeps 7 of 9
    maps = ticket_analysis.kernel_keep_maps({"layer1.0.conv1.weight_mask": mask,
                                             "layer1.0.downsample.0.weight_mask": torch.ones(2, 3, 1, 1)})
    assert list(maps) == ["layer1.0.conv1"]  # 1x1 convs have no kernels to show
    assert maps["layer1.0.conv1"].flatten().tolist() == pytest.approx([1, 0, 1, 1, 1, 7 / 9])
    assert ticket_analysis.shown_layers(["layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv1"]) == \
        ["layer1.0.conv1", "layer1.1.conv2", "layer2.0.conv1"]
    assert [plots.share_text(v) for v in (0, 1, 0.5, 0.0031, 0.01)] == ["0", "1", "0.50", "0.0031", "0.01"]
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, tight=True: figures.append(fig))
    plots.plot_layer_shares({"t": {"a": 0.0, "b": 3.0, "c": 80.0}}, str(tmp_path / "x.png"))
    assert figures[-1].axes[0].get_ylim()[0] == 0  # a share is never below 0
    plots.plot_groups({"IMP": [(100.0, 90.0, 1.0), (80.0, 89.5, 1.0), (64.0, 20.0, 1.0)]}, str(tmp_path / "y.png"),
                      dense=[("IMP", 90.0, 1.0, 3)], dense_of={"IMP": "IMP"}, ylabel="accuracy (%)")
    full, zoom = figures[-1].axes
    assert zoom.get_ylim() == pytest.approx(plots.zoom_band([(90.0, 1.0)])) and full.get_ylim()[0] < 20.0
    assert zoom.get_ylabel() == "accuracy (%)"


# -- bad input -------------------------------------------------------------------------------------

def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(main_report.main, main_report.get_args_parser(), argv)
    return exit_info.value.code, capsys.readouterr().err.strip()


def test_unfinished_run_is_reported_with_what_is_missing(tmp_path):
    fake_run(tmp_path / "done", rows=rounds([90, 91, 92]), seed=0)
    fake_run(tmp_path / "cut", rows=rounds([93, 94]), seed=1)  # 2 of 3 rounds
    fake_run(tmp_path / "started", seed=2)  # run.json only: died before its first round
    os.makedirs(tmp_path / "empty")
    out = make_report(tmp_path, str(tmp_path / "done"), str(tmp_path / "cut"), str(tmp_path / "started"),
                      str(tmp_path / "empty"))
    text = (out / "report.md").read_text()
    assert "2 of 3 rounds" in text and "rounds 2 missing" in text
    assert "no round finished yet" in text and "empty folder" in text
    rows = read_levels(out)
    assert [int(r["n"]) for r in rows] == [2, 2, 1]


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    os.makedirs(tmp_path / "empty")
    code, err = run_cli([str(tmp_path / "empty"), "--out", str(tmp_path / "o1")], capsys)
    assert code == 2 and err.startswith("error: no finished round") and "\n" not in err
    fake_run(tmp_path / "started", seed=0)
    code, err = run_cli([str(tmp_path / "started"), "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "no round finished yet" in err
    (tmp_path / "notarun").mkdir()
    (tmp_path / "notarun" / "notes.txt").write_text("hello")
    code, err = run_cli([str(tmp_path / "notarun"), "--out", str(tmp_path / "o3")], capsys)
    assert code == 2 and "not a run folder" in err
    fake_run(tmp_path / "digits", rows=rounds([90, 91, 92]), seed=0)
    fake_run(tmp_path / "cifar", rows=rounds([60, 61, 62]), seed=0, dataset="cifar10")
    code, err = run_cli([str(tmp_path / "digits"), str(tmp_path / "cifar"), "--out", str(tmp_path / "o4")], capsys)
    assert code == 2 and "different tasks" in err and "cifar10" in err and "\n" not in err
    for out in ("o1", "o2", "o3", "o4"):
        assert not (tmp_path / out).exists()  # nothing written
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    code, err = run_cli([str(tmp_path / "digits"), "--out", str(tmp_path / "busy")], capsys)
    assert code == 2 and "holds other files" in err and (tmp_path / "busy" / "keep.txt").read_text() == "mine"


# -- end to end on real runs -------------------------------------------------------------------------

FAST = ["--dataset", "digits", "--arch", "resnet18_w16", "--epochs", "1", "--batch_size", "256", "--lr", "0.05",
        "--decreasing_lr", "1", "--print_freq", "0", "--warmup", "0"]


def test_real_runs_and_tickets_end_to_end(tmp_path, one_thread):
    import main_eval_downstream
    import main_imp_downstream

    for seed in (0, 1):
        main_imp_downstream.main(main_imp_downstream.get_args_parser().parse_args(
            [*FAST, "--seed", str(seed), "--pruning_times", "2", "--save_dir", str(tmp_path / "runs" / f"imp_s{seed}")]))
    ticket = str(tmp_path / "runs" / "imp_s0" / "ticket_01.pt")
    main_eval_downstream.main(main_eval_downstream.get_args_parser().parse_args(
        [*FAST, "--seed", "0", "--save_dir", str(tmp_path / "runs" / "rev_s0"), "--mask_dir", ticket, "--reverse_mask"]))
    out = make_report(tmp_path, str(tmp_path / "runs"), extra=[
        "--tickets", f"imp={ticket}", str(tmp_path / "runs" / "imp_s1" / "ticket_02.pt")])
    groups = {(r["group"], float(r["remaining"])): int(r["n"]) for r in read_levels(out)}
    assert groups[("IMP (lt)", 100.0)] == 2 and groups[("IMP (lt)", 80.0)] == 2
    assert groups[("reversed masks of IMP (lt)", 20.0)] == 1  # keeps 20 %: shown there
    text = (out / "report.md").read_text()
    assert "## Matching verdicts" in text and "## Ticket analysis" in text and "## Provenance" in text
    assert "(the paper's Fig. 7)" in text and (out / "tickets" / "kernel_maps.png").stat().st_size > 10_000
    with open(out / "tickets" / "overlap.csv") as handle:
        overlap = list(csv.DictReader(handle))
    assert [float(r["iou"]) for r in overlap if r["ticket_a"] == r["ticket_b"]] == [1.0, 1.0]
    with open(out / "tickets" / "flops.csv") as handle:
        flops = list(csv.DictReader(handle))
    conv = [r for r in flops if r["ticket"] == "imp" and r["layer"] == "layer1.0.conv1"][0]
    assert int(conv["dense_flops"]) == 8 * 8 * 16 * 16 * 9 and int(conv["nonzero_params"]) < int(conv["dense_params"])
    make_report(tmp_path, str(tmp_path / "runs"))  # an earlier report in --out is replaced


def test_transfer_levels_meet_rounded_summary_levels_and_no_dense_level_skips_verdicts(tmp_path):
    # Summary rows round the remaining share to 4 decimals, transfer runs do not: one level.
    fake_run(tmp_path / "imp", rows=rounds([90.0, 80.0], remaining=(100.0, 0.0144)), seed=0)
    fake_run(tmp_path / "reinit", script="main_eval_downstream.py", seed=100,
             mask_dir=str(tmp_path / "imp" / "ticket_01.pt"),
             one_off={"remaining": 0.0144115, "test_acc_at_best_val": 70.0, "final_test_acc": 70.0})
    results = report.analyse(report.read_runs([str(tmp_path / "imp"), str(tmp_path / "reinit")]))
    comparison = results.controls["random re-init, masks of IMP (lt)"][0]
    assert comparison.reference.mean == 80.0 and comparison.control.mean == 70.0
    only_transfer = report.analyse(report.read_runs([str(tmp_path / "reinit")]))
    assert only_transfer.dense_refs() == [] and only_transfer.verdicts == {}
    assert any("no dense model of its experiment" in note for note in only_transfer.notes)
    # with the IMP run, the re-init control is judged against the IMP experiment's round 0
    assert results.groups[1].dense.label == "IMP (lt)" and results.groups[1].dense.rule == \
        "the dense model of the ticket's experiment"
