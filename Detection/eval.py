"""Evaluate a saved detection model: VOC07 AP (IoU 0.50:0.95), AP50, AP75 and AP50 per class.

Reads any model file the detection scripts write ({k}checkpoint.pth.tar, {k}model_SA_best.pth.tar,
backbone_imp{n}.pth: round n-1's trained weights under round n's masks, backbone_random{k}.pth: the
trained random-pruning model) or the original's backbone_imp{n}.pth; with --imp_num k alone, the model
IMP round k trained. Writes the comp4 files of this evaluation and eval.json to --result_dir, and
changes nothing else. Example (the
original's TicketSH/imp_imagenet_eval.sh, whose train_imp_eval.py crashes):

    python -u eval.py --imp_type imagenet --imp_num 7 --seed 10
"""

import json
import os
import sys

from Detection import runner
from Detection.imp_files import BACKBONE_IMP_KEYS, read_backbone_imp, round_state
from Detection.task import DetectionPruning, read_backbone_masks
from lth import cli, distributed, pruning
from lth.checkpoint import load_file, write_json
from lth.errors import UserError
from lth.runs import RunDir
from lth.session import open_session


def get_args_parser():
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_argument_group("what to evaluate")
    group.add_argument("--checkpoint", default=None,
                       help="the model file; default: the model round --imp_num of the IMP run in --save_dir "
                            "trained: its {imp_num}checkpoint.pth.tar, or (a finished round keeps no "
                            "checkpoint) backbone_imp{imp_num+1}.pth's weights with round imp_num's masks")
    group.add_argument("--imp_type", default="imagenet", choices=runner.PRETRAINED_TYPES,
                       help="with no --checkpoint: the IMP run's type (names its default folder)")
    group.add_argument("--imp_num", type=int, default=0, help="with no --checkpoint: the IMP round to evaluate")
    group.add_argument("--result_dir", default=None,
                       help="where the comp4 files and eval.json go (default: eval_{file name} beside the model)")
    runner.add_common_args(parser, trains=False)
    return parser


def model_state(path: str) -> dict:
    """The whole model's state_dict (masks as weight_orig/weight_mask) of a saved detection model."""
    obj = load_file(path, "detection model")
    if isinstance(obj, dict) and all(key in obj for key in BACKBONE_IMP_KEYS):
        return read_backbone_imp(obj)["all_state_dict"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    raise UserError(f"'{path}' is not a detection model file: expected a checkpoint with 'state_dict' or a "
                    f"backbone_imp file with {', '.join(BACKBONE_IMP_KEYS)}")


def imp_round_state(folder: str, round_index: int) -> tuple[dict, str]:
    """The model round ``round_index`` of the IMP run in ``folder`` trained, and the file(s) it came from."""
    checkpoint = os.path.join(folder, f"{round_index}checkpoint.pth.tar")
    if os.path.isfile(checkpoint):
        return model_state(checkpoint), checkpoint
    following = os.path.join(folder, f"backbone_imp{round_index + 1}.pth")
    if not os.path.isfile(following):
        raise UserError(f"round {round_index} of '{folder}' has neither '{os.path.basename(checkpoint)}' nor "
                        f"'{os.path.basename(following)}' (is the round trained? give --checkpoint otherwise)")
    masks = {}
    if round_index > 0:
        own = os.path.join(folder, f"backbone_imp{round_index}.pth")
        ticket = os.path.join(folder, f"ticket_{round_index:02d}.pt")
        source = ticket if os.path.isfile(ticket) else own
        if not os.path.isfile(source):
            raise UserError(f"round {round_index}'s masks are in neither '{ticket}' nor '{own}'")
        masks = read_backbone_masks(source)[0]
    return round_state(read_backbone_imp(following), masks), following


def main(args) -> dict:
    runner.check_args(args)
    if args.checkpoint is None:
        folder = args.save_dir or runner.default_save_dir(args.seed, args.imp_type, "imp")
        state, args.checkpoint = imp_round_state(folder, args.imp_num)
        name = f"round{args.imp_num}"
    elif not os.path.isfile(args.checkpoint):
        raise UserError(f"model file '{args.checkpoint}' does not exist")
    else:
        state = model_state(args.checkpoint)
        name = os.path.splitext(os.path.basename(args.checkpoint))[0].replace(".pth", "")
        if name.startswith("backbone_imp") and os.environ.get("RANK", "0") == "0":
            print(f"notice: {os.path.basename(args.checkpoint)} holds the weights the previous round trained under "
                  f"the masks pruned after it (a model no round trained); --imp_num k (without --checkpoint) "
                  f"evaluates the model round k trained", file=sys.stderr)
    result_dir = args.result_dir or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), f"eval_{name}")
    args.resume, args.pretrained = False, args.pretrained or "none"  # the file brings every weight
    RunDir(result_dir).check_location("--result_dir")
    session = open_session(args, RunDir(result_dir), None, default_seed=runner.config.DEFAULTS["seed"])
    setup = runner.build(args, session.ctx, session.precision, args.imp_type, result_dir, weights_follow=True)
    model = setup.model
    DetectionPruning(0.2).restore(model, state)
    try:
        model.load_state_dict(pruning.strip_prefixes(state), strict=True)
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
