"""CPU time of one training step of each demo's network, full width against resnet18_w16, one thread.

Prints images per CPU second (user + sys of this process, less sensitive to other jobs on a shared
machine than wall time) for the classification ResNet on 8x8 digits, DeepLabV3+ and YOLOv4 on 32 px
canvases. Run it with the instruction-set caps of a CPU without AVX-512 to see that machine's figures:

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 OMP_NUM_THREADS=1 python bench/demo_steps.py
"""

import argparse
import resource

import torch
import torch.nn.functional as F

from Detection.model import YOLOv4
from lth.models import build_model
from Segmentation.model import build_segmentation_model


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def images_per_cpu_second(model: torch.nn.Module, inputs: torch.Tensor, loss, steps: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        optimizer.zero_grad()
        loss(model(inputs)).backward()
        optimizer.step()

    for _ in range(2):  # warm-up: first-call allocations and kernel choices
        step()
    start = cpu_seconds()
    for _ in range(steps):
        step()
    return inputs.shape[0] * steps / (cpu_seconds() - start)


def main(args) -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} thread(s)")
    labels = torch.randint(0, 10, (args.batch_size,))
    digits = torch.randn(args.batch_size, 1, 8, 8)
    canvases = torch.randn(args.batch_size, 3, 32, 32)
    cases = []
    for arch in ("resnet18", "resnet18_w16"):
        cases.append((f"classification {arch}, 8x8 digits", build_model(arch, 10, 1, "cifar"), digits,
                      lambda out: F.cross_entropy(out, labels)))
    for arch in ("resnet18", "resnet18_w16"):
        cases.append((f"DeepLabV3+ {arch}, 32 px", build_segmentation_model(f"deeplabv3plus_{arch}", 11, 16),
                      canvases, lambda out: out.float().mean()))
    for arch in ("resnet18", "resnet18_w16"):
        cases.append((f"YOLOv4-{arch}, 32 px", YOLOv4(10, arch), canvases,
                      lambda out: sum(o.float().mean() for o in out[0])))
    print(f"| network (batch {args.batch_size}) | images per CPU second (train step) |\n|---|---:|")
    for name, model, inputs, loss in cases:
        print(f"| {name} | {images_per_cpu_second(model, inputs, loss, args.steps):.0f} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=16, help="images per training step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per network (after 2 warm-up steps)")
    main(parser.parse_args())
