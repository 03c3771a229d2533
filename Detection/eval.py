"""Evaluate a saved detection model: VOC07 AP (IoU 0.50:0.95), AP50, AP75 and AP50 per class.

Reads any model file the detection scripts write ({k}checkpoint.pth.tar, {k}model_SA_best.pth.tar,
backbone_imp{n}.pth, backbone_random{k}.pth) or the original's backbone_imp{n}.pth, writes the comp4
files of this evaluation and eval.json to --result_dir, and changes nothing else. Example (the
original's TicketSH/imp_imagenet_eval.sh, whose train_imp_eval.py crashes):

    python -u eval.py --imp_type imagenet --imp_num 7 --seed 10
"""

import json
import os
import sys

if __package__ in (None, ""):  # run as a script (python eval.py, the original's way)
    import _script_path  # noqa: F401  (the repository root on sys.path)
import pruning_utils  # noqa: E402
from Detection import runner  # noqa: E402
from Detection.hparams import DetectionEval  # noqa: E402
from Detection.model import BACKBONE_IMP_KEYS, read_backbone_imp  # noqa: E402
from Detection.task import DetectionPruning  # noqa: E402
from lth import cli, distributed  # noqa: E402
from lth.checkpoint import load_file, write_json  # noqa: E402
from lth.errors import UserError  # noqa: E402
from lth.runs import RunDir  # noqa: E402
from lth.session import open_session  # noqa: E402


def get_args_parser():
    return DetectionEval.parser(description=__doc__.split("\n\n")[0])


def model_state(path: str) -> dict:
    """The whole model's state_dict (masks as weight_orig/weight_mask) of a saved detection model."""
    obj = load_file(path, "detection model")
    if isinstance(obj, dict) and all(key in obj for key in BACKBONE_IMP_KEYS):
        return read_backbone_imp(obj)["all_state_dict"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    raise UserError(f"'{path}' is not a detection model file: expected a checkpoint with 'state_dict' or a "
                    f"backbone_imp file with {', '.join(BACKBONE_IMP_KEYS)}")


def main(args) -> dict:
    runner.check_args(args)
    if args.checkpoint is None:
        folder = args.save_dir or runner.default_save_dir(args.seed, args.imp_type, "imp")
        args.checkpoint = os.path.join(folder, f"{args.imp_num}checkpoint.pth.tar")
    if not os.path.isfile(args.checkpoint):
        raise UserError(f"model file '{args.checkpoint}' does not exist")
    state = model_state(args.checkpoint)
    name = os.path.splitext(os.path.basename(args.checkpoint))[0].replace(".pth", "")
    result_dir = args.result_dir or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), f"eval_{name}")
    args.resume, args.pretrained = False, args.pretrained or "none"  # the file brings every weight
    session = open_session(args, RunDir(result_dir), None, default_seed=runner.config.DEFAULTS["seed"])
    setup = runner.build(args, session.ctx, session.precision, args.imp_type, result_dir, weights_follow=True)
    model = setup.model
    DetectionPruning(0.2).restore(model, state)
    try:
        model.load_state_dict(pruning_utils.strip_prefixes(state), strict=True)
    except RuntimeError as error:
        raise UserError(f"'{args.checkpoint}' does not fit a YOLOv4-{args.arch} with {len(setup.data.class_names)} "
                        f"classes ({args.conv_type} convs): {str(error).splitlines()[0]}") from None
    remaining = DetectionPruning(0.2).remaining(model)
    # The split a run reports: VOC07 test (VOC's only evaluation split), the digits set's test split.
    split = "test" if setup.loaders.test is not None else "val"
    metrics = setup.evaluation(model, getattr(setup.loaders, split), split)
    if session.ctx.is_main:
        report = {"checkpoint": os.path.abspath(args.checkpoint), "remaining": round(remaining, 4),
                  "dataset": args.dataset, "split": "test", **metrics}
        write_json(report, os.path.join(result_dir, "eval.json"))
        print(f"AP {metrics['ap']:.2f} AP50 {metrics['ap50']:.2f} AP75 {metrics['ap75']:.2f} "
              f"({remaining:.2f}% of backbone conv weights remain; {args.checkpoint})")
        print("AP50 per class: " + json.dumps(metrics["class_ap50"]))
        print(f"comp4 files and eval.json in {result_dir}", file=sys.stderr)
    distributed.teardown()
    return metrics


if __name__ == "__main__":
    cli.run_main(main, get_args_parser())
