"""The original's detection settings (config/yolov4_config.py, train_imp.py) in one place, with
what its code really did where that differs from what the config says.

Findings, read from the original's Detection/ (VITA-Group/CV_LTH_Pre-training):

1. Epochs. ``train_imp.py`` (Trainer.__init__)::

       self.epochs = (
           cfg.TRAIN["YOLO_EPOCHS"]
           if cfg.MODEL_TYPE["TYPE"] == "YOLOv4"
           else cfg.TRAIN["Mobilenet_YOLO_EPOCHS"]
       )

   and ``config/yolov4_config.py`` sets ``MODEL_TYPE = {"TYPE": "Resnet50-YOLOv4"}``,
   ``"YOLO_EPOCHS": 50``, ``"Mobilenet_YOLO_EPOCHS": 120``. The type is not "YOLOv4", so every
   IMP round trained **120 epochs** (``EPOCHS_AS_RUN``); 50 is what the config names for YOLOv4
   (``EPOCHS_AS_MEANT``).

2. Learning rate. The scheduler (``utils/cosine_lr_scheduler.py`` CosineDecayLR) is built with
   ``T_max=self.epochs * len(self.train_dataloader)``,
   ``warmup=cfg.TRAIN["WARMUP_EPOCHS"] * len(self.train_dataloader)`` and gives
   ``lr = lr_init / warmup * t`` for ``t < warmup``, else
   ``lr_end + 0.5 * (lr_init - lr_end) * (1 + cos((t - warmup) / (T_max - warmup) * pi))``.
   It is stepped once per batch with::

       self.scheduler.step(
           len(self.train_dataloader)
           / (cfg.TRAIN["BATCH_SIZE"])
           * epoch
           + i
       )

   so the index grows by ``len(loader) / 8`` per epoch instead of ``len(loader)``: each epoch
   replays a window of ``len(loader)`` indices that starts only 1/8 of an epoch after the
   previous one (a saw-tooth), warm-up ends around epoch 9-16 instead of 2, and after 120 epochs
   the index reaches about 0.13 of ``T_max``. With VOC07+12 (2,069 batches of 8) each epoch of
   the first 16 ramps up from ``epoch/16 x 1e-4`` and from epoch 16 on the learning rate stays
   between 9.67e-5 and 1e-4 to the end (1e-6 is never approached). ``learning_rate(schedule="as_run")``
   reproduces this; ``schedule="as_meant"`` is the intended cosine from 1e-4 to 1e-6 after a
   2-epoch warm-up.

3. Gradient accumulation. ``if i % self.accumulate == 0: optimizer.step(); zero_grad()`` steps
   after batch 0 alone, then after every 2 batches; the gradients of the accumulated batches
   are summed, not averaged (the loss is not divided by ``accumulate``).

4. Evaluation. ``Evaluator(...).APs_voc()`` is called without arguments, so ``multi_test`` and
   ``flip_test`` are False: although the config sets ``MULTI_SCALE_VAL`` and ``FLIP_VAL`` to True,
   the reported AP is single-scale 416 without flipping. It runs once, after the last epoch of
   each round.

5. DO-Conv. ``CONV_TYPE = {"TYPE": "DO_CONV"}`` only switches ``Convolutional`` in
   ``model/layers/conv_module.py``, which only ``model/layers/blocks_module.py`` imports, which
   nothing imports. The Resnet50-YOLOv4 neck and heads are built from ``model/YOLOv4.py``'s own
   ``Conv`` (a plain ``nn.Conv2d``): the original trained ordinary convolutions. The default conv
   type here is therefore ``general``; ``do_conv`` is offered (Detection/model.py DOConv2d).
"""

from __future__ import annotations

import math

# The original's values (config/yolov4_config.py TRAIN / VAL, train_imp.py flags).
EPOCHS_AS_RUN = 120
EPOCHS_AS_MEANT = 50
DEFAULTS = {
    "epochs": EPOCHS_AS_RUN,
    "batch_size": 8,
    "accumulate": 2,
    "img_size": 416,
    "lr_init": 1e-4,
    "lr_end": 1e-6,
    "warmup_epochs": 2,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "conf_thresh": 0.005,
    "nms_thresh": 0.45,
    "iou_threshold_loss": 0.5,
    "multi_scale_val": False,   # the config says True; train_imp.py's evaluation never used it
    "flip_val": False,          # idem
    "conv_type": "general",     # the config says DO_CONV; the ResNet-50 model never used it
    "label_smoothing": 0.01,
    "mixup_alpha": 1.5,
    "max_boxes_per_scale": 150,
    "anchor_iou_threshold": 0.3,
    "seed": 1,
    "prune_rate": 0.2,
}
MULTI_SCALE_VAL_SIZES = tuple(range(320, 640, 96))  # the original's test sizes: 320, 416, 512, 608
LR_SCHEDULES = ("as_run", "as_meant")


def cosine_decay_lr(t: float, t_max: float, warmup: float, lr_init: float, lr_end: float) -> float:
    """The original's CosineDecayLR.step(t): linear warm-up from 0, then cosine to ``lr_end``."""
    if warmup and t < warmup:
        return lr_init / warmup * t
    return lr_end + 0.5 * (lr_init - lr_end) * (1 + math.cos((t - warmup) / (t_max - warmup) * math.pi))


def schedule_index(epoch: int, batch_index: int, batches_per_epoch: int, batch_size: int,
                   schedule: str = "as_run") -> float:
    """The step index the scheduler receives at (epoch, batch): the original's, or the intended one."""
    if schedule == "as_run":
        return batches_per_epoch / batch_size * epoch + batch_index
    if schedule == "as_meant":
        return batches_per_epoch * epoch + batch_index
    raise ValueError(f"unknown schedule '{schedule}': choose one of {', '.join(LR_SCHEDULES)}")


def learning_rate(epoch: int, batch_index: int, batches_per_epoch: int, *, schedule: str = "as_run",
                  epochs: int = EPOCHS_AS_RUN, batch_size: int = 8, lr_init: float = 1e-4,
                  lr_end: float = 1e-6, warmup_epochs: float = 2) -> float:
    """The learning rate of batch ``batch_index`` of ``epoch`` (set before that batch's step)."""
    t = schedule_index(epoch, batch_index, batches_per_epoch, batch_size, schedule)
    return cosine_decay_lr(t, epochs * batches_per_epoch, warmup_epochs * batches_per_epoch, lr_init, lr_end)


def accumulation_steps_here(batch_index: int, accumulate: int) -> bool:
    """Whether the original stepped the optimizer after this batch (``i % accumulate == 0``)."""
    return batch_index % accumulate == 0
