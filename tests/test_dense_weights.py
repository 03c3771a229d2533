"""Pre-trained weights into the dense tasks' backbones as the original loaded them: MoCo v2's encoder
(the original's 17-character key stripping let encoder_k overwrite encoder_q) and SimCLR files that
carry a projection head (the original kept only the keys its ResNet had)."""

from __future__ import annotations

import pytest
import torch

from Detection import runner as det_runner
from Detection import train_imp
from Detection.hparams import DetectionTransfer
from Detection.model import YOLOv4
from Detection.task import load_backbone_weights
from lth.errors import UserError
from lth.models import build_model, load_pretrained
from Segmentation import run as seg_run
from Segmentation.model import build_segmentation_model


def moco_checkpoint(path) -> dict:
    """A MoCo v2 checkpoint as main_moco.py saves it: DataParallel's module., encoder_q's tensors,
    then encoder_k's (other values), then the queue; the MLP head under fc.0/fc.2."""
    torch.manual_seed(0)
    state = {}
    for encoder in ("encoder_q", "encoder_k"):
        net = build_model("resnet18", 128, stem="imagenet")
        for key, value in net.state_dict().items():
            if key.startswith("fc."):
                continue
            state[f"module.{encoder}.{key}"] = value + (0.0 if encoder == "encoder_q" else 1.0) \
                if value.is_floating_point() else value
        state[f"module.{encoder}.fc.0.weight"] = torch.randn(512, 512)
        state[f"module.{encoder}.fc.2.weight"] = torch.randn(128, 512)
    state["module.queue"] = torch.randn(128, 64)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state}, path)
    return state


def original_moco_load(backbone: torch.nn.Module, state: dict) -> dict:
    """The original's loader (Segmentation/main_imp_moco.py, Detection/train_imp.py), written out:
    model_state = backbone.state_dict(); update = {k[17:]: v for k, v in ckpt.items() if k[17:] in
    model_state}; model_state.update(update); backbone.load_state_dict(model_state)."""
    model_state = backbone.state_dict()
    update = {k[17:]: v for k, v in state.items() if k[17:] in model_state}
    model_state.update(update)
    return model_state


@pytest.mark.parametrize("where", ["segmentation", "detection"])
def test_moco_key_encoder_by_default_as_the_original_loaded_it(tmp_path, where):
    state = moco_checkpoint(tmp_path / "moco.pth.tar")
    if where == "segmentation":
        fresh = lambda: build_segmentation_model("deeplabv3plus_resnet18", 21, 16, False)  # noqa: E731
        parser = seg_run.get_args_parser("imp", seg_run.SOURCES["moco"])
        default = parser.parse_args(["exp"]).moco_encoder

        def load(model, encoder):
            load_pretrained(model.backbone, str(tmp_path / "moco.pth.tar"), None, conv1=True, quiet=True,
                            moco_encoder=encoder)
    else:
        fresh = lambda: YOLOv4(20, "resnet18")  # noqa: E731
        default = train_imp.get_args_parser().parse_args([]).moco_encoder

        def load(model, encoder):
            load_backbone_weights(model, str(tmp_path / "moco.pth.tar"), quiet=True, moco_encoder=encoder)
    assert default == "k"
    model = fresh()
    expected = original_moco_load(model.backbone, state)
    load(model, default)
    ours = model.backbone.state_dict()
    assert ours.keys() == expected.keys()
    assert all(torch.equal(ours[key], expected[key]) for key in ours)
    assert torch.equal(ours["layer1.0.conv1.weight"], state["module.encoder_k.layer1.0.conv1.weight"])
    # q: the query encoder, as MoCo's own linear evaluation (and our classification scripts) take it
    model = fresh()
    load(model, "q")
    ours = model.backbone.state_dict()
    assert torch.equal(ours["layer1.0.conv1.weight"], state["module.encoder_q.layer1.0.conv1.weight"])
    assert torch.equal(ours["conv1.weight"], state["module.encoder_q.conv1.weight"])


def test_moco_encoder_flag_is_part_of_the_run_and_refuses_other_values():
    parser = seg_run.get_args_parser("transfer", seg_run.SOURCES["moco"])
    assert parser.parse_args(["exp", "--moco_encoder", "q"]).moco_encoder == "q"
    with pytest.raises(SystemExit):
        parser.parse_args(["exp", "--moco_encoder", "v"])
    # an experiment field: the choice changes the run's experiment id, so a resume cannot switch it
    seg = seg_run.SEGMENTATION_HPARAMS["transfer", "moco"]
    ids = {seg.from_args(parser.parse_args(["exp", "--moco_encoder", encoder])).experiment_id for encoder in "qk"}
    assert len(ids) == 2
    det = DetectionTransfer.parser()
    ids = {DetectionTransfer.from_args(det.parse_args(["--mask_dir", "m", "--moco_encoder", encoder])).experiment_id
           for encoder in "qk"}
    assert len(ids) == 2


def test_a_simclr_file_with_a_projection_head_loads_its_resnet(tmp_path, capsys):
    """The original kept the keys its ResNet had ({k: v for k, v in ckpt.items() if k in
    model_state}); a head under any name is skipped, and said; a ResNet tensor of another
    architecture is still refused."""
    torch.manual_seed(1)
    net = build_model("resnet18", 10, stem="imagenet")
    state = {key: value for key, value in net.state_dict().items() if not key.startswith("fc.")}
    state.update({"fc.fc1.weight": torch.randn(512, 512), "fc.fc2.weight": torch.randn(128, 512),
                  "projector.0.weight": torch.randn(512, 512), "head.2.bias": torch.randn(128)})
    torch.save({"state_dict": state}, tmp_path / "simclr.pt")
    for model in (build_segmentation_model("deeplabv3plus_resnet18", 21, 16, False), YOLOv4(20, "resnet18")):
        report = load_pretrained(model.backbone, str(tmp_path / "simclr.pt"), None, conv1=True)
        assert sorted(report.skipped) == ["head.2.bias", "projector.0.weight"]
        own = model.backbone.state_dict()
        assert all(torch.equal(own[key], state[key]) for key in own if key in state)
        assert "outside the ResNet skipped" in capsys.readouterr().err
    state["layer4.2.conv3.weight"] = torch.randn(4, 4, 1, 1)  # a ResNet-50 tensor: another architecture
    torch.save({"state_dict": state}, tmp_path / "wide.pt")
    with pytest.raises(UserError, match="layer4.2.conv3.weight"):
        load_pretrained(YOLOv4(20, "resnet18").backbone, str(tmp_path / "wide.pt"), None, conv1=True)
