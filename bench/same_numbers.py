"""Same numbers before and after a refactor: tiny runs of every entry script, reduced to hashes.

Runs (seed fixed, CPU, one thread) a digits IMP of each prune type, a ticket transfer, the
segmentation IMP (one round per command and all rounds in one) and its transfer, the detection IMP,
transfer and random pruning, SimCLR and MoCo IMP, the ImageNet IMP and dense training, VisDA
IMP and ticket evaluation. For each run folder it records the sha256 of every ticket's masks, of
metrics.jsonl and summary.jsonl / summary.json (timing columns left out), of every checkpoint's
state_dict, and the names of the files written. Usage:

    PYTHONPATH=$PWD python bench/same_numbers.py --out /tmp/after.json --compare bench/same_numbers_baseline.json

``--compare`` prints every difference and exits 1 when masks or metrics differ (state_dict hashes
and file names are reported, not failed on: a refactor may add a key or a file on purpose).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

TIMING = ("seconds", "train_images_per_s", "images_per_s", "created", "time")
# Keys a change adds to the logs on purpose, left out with --ignore_keys: every key a row, or a
# dict inside it, holds under that name.
IGNORED: set = set()


def tensor_digest(tensors: dict) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            digest.update(str(value.dtype).encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def rows_digest(rows, base: str = "") -> str:
    """Timing columns and timestamps left out, the runs' base folder written as <base>."""
    def clean(value):
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items() if key not in TIMING and key not in IGNORED}
        if isinstance(value, list):
            return [clean(item) for item in value]
        if isinstance(value, str) and base:
            return value.replace(base, "<base>")
        return value
    return hashlib.sha256(json.dumps(clean(list(rows)), sort_keys=True).encode()).hexdigest()


def read_rows(path: str):
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def describe(folder: str, base: str = "") -> dict:
    """Hashes of everything under ``folder`` that a refactor must keep."""
    from lth.runs import METRICS, ONE_OFF_SUMMARY, SUMMARY
    from lth.tickets import read_masks

    out: dict = {"files": [], "masks": {}, "metrics": {}, "state_dicts": {}}
    for where, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(where, name)
            relative = os.path.relpath(path, folder)
            out["files"].append(relative)
            if name.startswith("ticket_") and name.endswith(".pt"):
                masks, _ = read_masks(path)
                out["masks"][relative] = tensor_digest(masks)
            elif name in (METRICS, SUMMARY):
                out["metrics"][relative] = rows_digest(read_rows(path), base)
            elif name == ONE_OFF_SUMMARY:
                with open(path) as handle:
                    out["metrics"][relative] = rows_digest([json.load(handle)], base)
            elif name.endswith((".pth.tar", ".pth")) or name.endswith("_rewind_weight.pt"):
                obj = torch.load(path, map_location="cpu", weights_only=False)
                if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
                    out["state_dicts"][relative] = tensor_digest(obj["state_dict"])
                elif isinstance(obj, dict) and all(isinstance(obj.get(k), dict) for k in ("backbone", "classifier")):
                    out["state_dicts"][relative] = tensor_digest(
                        {f"{part}.{key}": value for part in obj for key, value in obj[part].items()
                         if isinstance(obj[part], dict)})
    out["files"].sort()
    return out


# -- tiny data in the real on-disk layouts --------------------------------------------------------

def write_image_folder(root: str, classes=("cat", "dog"), train=4, val=2, size=(32, 32)) -> str:
    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for label in classes:
            os.makedirs(os.path.join(root, split, label), exist_ok=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(os.path.join(root, split, label, f"{index}.png"))
    return root


def write_visda(root: str, labels=(0, 3, 11), train=4, val=2) -> str:
    rng = np.random.default_rng(1)
    for split, count in (("train", train), ("validation", val)):
        lines = []
        for label in labels:
            for index in range(count):
                relative = f"class{label}/{index}.png"
                os.makedirs(os.path.join(root, split, f"class{label}"), exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (36, 30, 3), dtype=np.uint8)).save(
                    os.path.join(root, split, relative))
                lines.append(f"{relative} {label}")
        with open(os.path.join(root, split, "image_list.txt"), "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return root


# -- the runs ---------------------------------------------------------------------------------------

def parse_and_run(module, argv):
    args = module.get_args_parser().parse_args([str(item) for item in argv])
    return module.main(args)


def classification(base: str) -> dict:
    import main_eval_downstream
    import main_imp_downstream

    fast = ["--dataset", "digits", "--arch", "resnet18", "--epochs", "2", "--batch_size", "256", "--lr", "0.05",
            "--decreasing_lr", "1", "--seed", "0", "--print_freq", "0"]
    runs = {}
    lt = os.path.join(base, "cls_lt")
    parse_and_run(main_imp_downstream, [*fast, "--pruning_times", "3", "--save_dir", lt])
    runs["cls_lt"] = lt
    for prune_type, extra in (("rewind_lt", ["--rewind_epoch", "1"]), ("pt", []),
                              ("pt_trans", ["--pretrained", os.path.join(lt, "0model_SA_best.pth.tar")])):
        out = os.path.join(base, f"cls_{prune_type}")
        parse_and_run(main_imp_downstream, [*fast, "--pruning_times", "2", "--prune_type", prune_type, *extra,
                                            "--save_dir", out])
        runs[f"cls_{prune_type}"] = out
    out = os.path.join(base, "cls_eval")
    parse_and_run(main_eval_downstream, [*fast, "--pretrained", os.path.join(lt, "0model_SA_best.pth.tar"),
                                         "--mask_dir", os.path.join(lt, "ticket_02.pt"), "--save_model",
                                         "--save_dir", out])
    runs["cls_eval"] = out
    return runs


def segmentation(base: str) -> dict:
    from Segmentation import run as segrun

    fast = ["--dataset", "digits", "--model", "deeplabv3plus_resnet18", "--pretrained", "none", "--total_itrs", "4",
            "--val_interval", "2", "--batch_size", "8", "--val_batch_size", "135", "--random_seed", "3",
            "--cpu", "--print_interval", "0"]
    rounds = os.path.join(base, "seg_rounds")
    for k in range(2):
        segrun.imp_entry("imagenet", [f"r{k}", "--imp_num", str(k), "--save_dir", rounds, *fast])
    segrun.imp_entry("moco", ["m0", "--imp_num", "0", "--save_dir", os.path.join(base, "seg_moco"), *fast,
                              "--total_itrs", "6"])
    sweep = os.path.join(base, "seg_sweep")
    segrun.imp_entry("imagenet", ["sweep", "--imp_rounds", "2", "--save_dir", sweep, *fast, "--total_itrs", "2"])
    transfer = os.path.join(base, "seg_transfer")
    for exp, extra in (("ticket", []), ("reverse", ["--reverse_mask"]), ("random", ["--random_prune"])):
        segrun.transfer_entry("imagenet", [exp, "--save_dir", transfer, *fast, "--val_interval", "4",
                                           "--mask_dir", os.path.join(rounds, "ticket_02.pt"), *extra])
    segrun.transfer_entry("imagenet", ["dense", "--save_dir", transfer, *fast, "--lr_policy", "step",
                                       "--step_size", "1", "--total_itrs", "2", "--val_interval", "1"])
    return {"seg_rounds": rounds, "seg_moco": os.path.join(base, "seg_moco"), "seg_sweep": sweep,
            "seg_transfer": transfer}


def detection(base: str) -> dict:
    from Detection import train_imp, train_random, train_transfer
    from lth.models import build_model

    tiny = ["--dataset", "digits", "--digits_canvas", "32", "--digits_counts", "24,8,8", "--arch", "resnet18",
            "--img_size", "32", "--batch_size", "8", "--workers", "0", "--seed", "0", "--lr_schedule", "as_meant",
            "--warmup_epochs", "0", "--lr_init", "0.01", "--print_freq", "0", "--epochs", "2"]
    torch.manual_seed(3)
    weights = os.path.join(base, "resnet18.pth")
    torch.save(build_model("resnet18", 10, stem="imagenet").state_dict(), weights)
    imp = os.path.join(base, "det_imp")
    parse_and_run(train_imp, [*tiny, "--imp_num", "0", "--rounds", "2", "--pretrained", weights, "--save_dir", imp])
    parse_and_run(train_imp, [*tiny, "--imp_num", "2", "--pretrained", weights, "--save_dir", imp])
    transfer = os.path.join(base, "det_transfer")
    parse_and_run(train_transfer, [*tiny, "--mask_dir", os.path.join(imp, "ticket_02.pt"), "--mask_num", "2",
                                   "--pretrained", weights, "--save_dir", transfer])
    random = os.path.join(base, "det_random")
    parse_and_run(train_random, [*tiny, "--imp_num", "1", "--pretrained", weights, "--save_dir", random])
    return {"det_imp": imp, "det_transfer": transfer, "det_random": random}


def contrastive(base: str) -> dict:
    from lth.models import build_model
    from MoCo import main_moco_imp
    from MoCo.builder import make_encoder
    from SimCLR import main as simclr_main

    data = write_image_folder(os.path.join(base, "images"), train=8, val=3)
    torch.manual_seed(1)
    sim = build_model("resnet18", 1000, 3, "imagenet").state_dict()
    torch.save({"state_dict": sim}, os.path.join(base, "simclr_weight.pt"))
    simclr_out = os.path.join(base, "simclr")
    parse_and_run(simclr_main, ["exp", "--arch", "resnet18", "--image_size", "32", "--batch_size", "4", "-j", "0",
                                "--cpu", "--print_freq", "0", "--epochs", "2", "--prun_epoch", "1", "--lr", "0.5",
                                "--data", data, "--sim_model", os.path.join(base, "simclr_weight.pt"),
                                "--save_dir", simclr_out])
    parse_and_run(simclr_main, ["dense", "--arch", "resnet18", "--image_size", "32", "--batch_size", "4", "-j", "0",
                                "--cpu", "--print_freq", "0", "--epochs", "1", "--prun_percent", "0",
                                "--data", data, "--sim_model", "none", "--save_dir", simclr_out])
    moco_data = write_image_folder(os.path.join(base, "moco_images"), train=4, val=2)
    torch.manual_seed(1)
    query = make_encoder("resnet18", 16, mlp=True).state_dict()
    torch.manual_seed(2)
    key = make_encoder("resnet18", 16, mlp=True).state_dict()
    state = {f"module.encoder_q.{name}": value for name, value in query.items()}
    state.update({f"module.encoder_k.{name}": value for name, value in key.items()})
    state["module.queue"] = torch.nn.functional.normalize(torch.randn(16, 16), dim=0)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    v2 = os.path.join(base, "moco_v2_800ep_pretrain.pth.tar")
    torch.save({"state_dict": state, "epoch": 800}, v2)
    tiny = ["-a", "resnet18", "--image_size", "32", "-b", "4", "--moco-k", "16", "--moco-dim", "16",
            "--epochs", "2", "--retrain_epoch", "1", "-j", "0", "--cpu", "--mlp", "--aug-plus", "--seed", "0",
            "--moco-t", "0.2"]
    moco_out = os.path.join(base, "moco")
    parse_and_run(main_moco_imp, [moco_data, "--pretrained_path", v2, *tiny, "--save_dir", moco_out])
    moco_dense = os.path.join(base, "moco_dense")
    parse_and_run(main_moco_imp, [moco_data, "--pretrained_path", "none", *tiny, "--epochs", "1",
                                  "--retrain_epoch", "0", "--save_dir", moco_dense])
    return {"simclr": simclr_out, "moco": moco_out, "moco_dense": moco_dense}


def imagenet(base: str) -> dict:
    import main_eval_visda
    import main_imp_imagenet
    import main_imp_visda
    from lth.models import build_model

    fast = ["-a", "resnet18", "--image_size", "32", "-b", "4", "--epochs", "1", "-j", "0", "--seed", "0", "-p", "0"]
    folder = write_image_folder(os.path.join(base, "imagenet_data"), classes=("cat", "dog", "fox"), size=(36, 30))
    visda = write_visda(os.path.join(base, "visda_data"))
    torch.manual_seed(123)
    weights = os.path.join(base, "imagenet_weight.pt")
    torch.save(build_model("resnet18", 3, stem="imagenet").state_dict(), weights)
    runs = {name: os.path.join(base, name) for name in ("imagenet_imp", "imagenet_dense", "visda_imp", "visda_eval")}
    parse_and_run(main_imp_imagenet, [folder, *fast, "--states", "2", "--pretrained", weights,
                                      "--save_dir", runs["imagenet_imp"]])
    parse_and_run(main_imp_imagenet, [folder, *fast, "--states", "0", "--random", "--save_dir", runs["imagenet_dense"]])
    parse_and_run(main_imp_visda, [visda, *fast, "--states", "2", "--prune_type", "lt", "--save_dir", runs["visda_imp"]])
    parse_and_run(main_eval_visda, [visda, *fast, "--epochs", "2", "--mask_dir",
                                    os.path.join(runs["imagenet_imp"], "ticket_02.pt"), "--pretrained",
                                    os.path.join(runs["imagenet_imp"], "1model_best.pth.tar"),
                                    "--save_dir", runs["visda_eval"]])
    return runs


GROUPS = {"classification": classification, "segmentation": segmentation, "detection": detection,
          "contrastive": contrastive, "imagenet": imagenet}


def compare(before: dict, after: dict) -> bool:
    """Print the differences; True when masks and metrics are identical."""
    same = True
    for run in sorted(set(before) | set(after)):
        if run not in before or run not in after:
            print(f"{run}: only in {'after' if run in after else 'before'}")
            same = False
            continue
        old, new = before[run], after[run]
        for kind in ("masks", "metrics"):
            for name in sorted(set(old[kind]) | set(new[kind])):
                if old[kind].get(name) != new[kind].get(name):
                    print(f"DIFFERENT {run} {kind} {name}: {old[kind].get(name)} -> {new[kind].get(name)}")
                    same = False
        for name in sorted(set(old["state_dicts"]) | set(new["state_dicts"])):
            if old["state_dicts"].get(name) != new["state_dicts"].get(name):
                print(f"note: {run} state_dict of {name}: {old['state_dicts'].get(name)} -> "
                      f"{new['state_dicts'].get(name)}")
        added = sorted(set(new["files"]) - set(old["files"]))
        removed = sorted(set(old["files"]) - set(new["files"]))
        if added or removed:
            print(f"note: {run} files added {added} removed {removed}")
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file the hashes are written to")
    parser.add_argument("--compare", default=None, help="an earlier --out to compare with")
    parser.add_argument("--groups", default=",".join(GROUPS), help="comma-separated subset of " + ",".join(GROUPS))
    parser.add_argument("--keep", default=None, help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--ignore_keys", default="",
                        help="comma-separated log keys a change added on purpose (e.g. experiment,cost_epochs), "
                             "left out of this run's metric hashes, to compare with a baseline taken before "
                             "they existed")
    args = parser.parse_args()
    IGNORED.update(key for key in args.ignore_keys.split(",") if key)
    torch.set_num_threads(1)
    result = {}
    with contextlib.ExitStack() as stack:
        base = os.path.abspath(args.keep) if args.keep else stack.enter_context(tempfile.TemporaryDirectory())
        for name in args.groups.split(","):
            start = time.perf_counter()
            os.makedirs(os.path.join(base, name), exist_ok=True)
            with contextlib.redirect_stdout(io.StringIO()):
                runs = GROUPS[name](os.path.join(base, name))
            for run, folder in runs.items():
                result[run] = describe(folder, base)
            print(f"{name}: {len(runs)} runs in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1, sort_keys=True)
    if args.compare:
        with open(args.compare) as handle:
            before = json.load(handle)
        before = {run: value for run, value in before.items() if run in result}
        if not compare(before, result):
            print("masks or metrics differ")
            return 1
        print(f"same masks and metrics in {len(result)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
