"""Tests for Detection/config.py: the learning rate the original's scheduler really produced (its
CosineDecayLR and its step index, written out here) and the intended schedule."""

from __future__ import annotations

import numpy as np
import pytest

from Detection.config import DEFAULTS, EPOCHS_AS_RUN, accumulation_steps_here, learning_rate


class ReferenceCosineDecayLR:
    """The original's utils/cosine_lr_scheduler.py, on a plain dict instead of an optimizer."""

    def __init__(self, T_max, lr_init, lr_min=0.0, warmup=0):
        self.T_max, self.lr_min, self.lr_max, self.warmup = T_max, lr_min, lr_init, warmup
        self.lr = None

    def step(self, t):
        if self.warmup and t < self.warmup:
            lr = self.lr_max / self.warmup * t
        else:
            T_max = self.T_max - self.warmup
            t = t - self.warmup
            lr = self.lr_min + 0.5 * (self.lr_max - self.lr_min) * (1 + np.cos(t / T_max * np.pi))
        self.lr = lr


def test_as_run_schedule_is_the_originals_step_index_over_the_batch_size():
    batches, epochs, batch_size = 37, 12, 8
    scheduler = ReferenceCosineDecayLR(T_max=epochs * batches, lr_init=1e-4, lr_min=1e-6, warmup=2 * batches)
    for epoch in range(epochs):
        for i in range(batches):
            scheduler.step(batches / batch_size * epoch + i)        # train_imp.py's call
            ours = learning_rate(epoch, i, batches, schedule="as_run", epochs=epochs, batch_size=batch_size)
            assert ours == pytest.approx(scheduler.lr, rel=1e-12, abs=1e-18)
            scheduler.step(batches * epoch + i)                      # what was meant
            assert learning_rate(epoch, i, batches, schedule="as_meant", epochs=epochs) == \
                pytest.approx(scheduler.lr, rel=1e-12, abs=1e-18)


def test_the_documented_finding_on_voc():
    batches = 2069                                                   # VOC07+12 trainval in batches of 8
    late = [learning_rate(e, i, batches) for e in range(16, EPOCHS_AS_RUN) for i in range(0, batches, 97)]
    assert 9.66e-5 < min(late) and max(late) <= 1e-4
    assert learning_rate(0, batches - 1, batches) == pytest.approx(0.5e-4, rel=1e-3)   # epoch 0 ramps to half
    assert learning_rate(EPOCHS_AS_RUN - 1, batches - 1, batches, schedule="as_meant") == pytest.approx(1e-6, rel=1e-3)
    assert DEFAULTS["epochs"] == 120 and DEFAULTS["conv_type"] == "general"


def test_accumulation_rule():
    assert [i for i in range(7) if accumulation_steps_here(i, 2)] == [0, 2, 4, 6]


def test_the_originals_flags_are_accepted_and_say_what_they_do(capsys):
    """train_imp.py/train_random.py/train_transfer.py of the original took --weight_path, --log_path,
    --fp_16 (type=bool: any non-empty value was True) and, for IMP and random pruning, an unused
    --mask_dir. Here each is accepted; the ones without a job are said ignored on one line, and
    --fp_16 true trains in bf16 autocast (mixed precision; evaluation stays fp32)."""
    from Detection import runner, train_imp, train_random, train_transfer

    line = ["--weight_path", "weight/mobilenetv2.pth", "--log_path", "log/", "--fp_16", "true"]
    for module in (train_imp, train_random):
        args = module.get_args_parser().parse_args([*line, "--mask_dir", ""])
        notices = runner.original_flag_notices(args)
        assert [n.split()[1] for n in notices] == ["--weight_path", "--log_path", "--mask_dir", "--fp_16:"]
        assert args.precision == "bf16" and args.eval_precision == "fp32"
    args = train_transfer.get_args_parser().parse_args([*line[:4], "--fp_16", "False", "--mask_dir", "m.pt"])
    assert len(runner.original_flag_notices(args)) == 2 and args.precision == "auto"  # false: nothing changes
    with pytest.raises(SystemExit):
        train_imp.get_args_parser().parse_args(["--fp_16", "maybe"])
    assert "expected true or false" in capsys.readouterr().err
