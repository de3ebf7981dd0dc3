"""``shufflenet-bench train``: train ShuffleNet V1 on a small real image dataset, fused
against naive: the whole-program training numbers of the project.

    shufflenet-bench train --steps 200 --out DIR         # fused and naive, same seed and weights
    shufflenet-bench train --fused --steps 50            # one implementation only
    torchrun --nproc-per-node 2 -m shufflenet_ops.bench train --ddp --steps 20 --out DIR   # DistributedDataParallel

Data: scikit-learn's handwritten digits (1797 8x8 grayscale images, 10 classes, shipped in
the package: nothing is downloaded), upsampled to ``--image-size`` (the network downsamples
by 32) and repeated to 3 channels; a fixed split of 1497 training and 300 test images. The
model is ``shufflenet_v1(groups, width, num_classes=10)``; the naive model is built from the
seed and the fused one loads its state_dict, so both start from the same weights and see the
same batches. Reports images/s, the loss curve of each (one plot), how far the two curves
part, and the final test accuracy.

Fused and naive compute the same function in a different order of float operations (other
kernels, the fused network's activations in channels_last), so in float32 their losses
differ by rounding from the first step, and training (BatchNorm on small 1x1 maps, small
batches) amplifies that step by step until the curves are two different, equally good runs:
compare the curves, not single steps. In float64 (``--dtype float64``) the first steps agree
far more closely and the gap grows at the same rate from a far smaller start
(benchmarks/README.md has the figures): the implementations match, and the parting is the
training's sensitivity to rounding, not an error. With ``--ddp`` (under torchrun) each rank
trains on its share of every global batch with gloo (CPU) or nccl (GPU), and the ranks'
parameters are compared at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

from ..models import shufflenet_v1
from .cli import pick_device
from .provenance import load_average, provenance

TEST_IMAGES = 300
DTYPES = {"float32": torch.float32, "float64": torch.float64}
CHANCE_ACCURACY = 0.1  # 10 classes


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def load_digits(image_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train x, train y, test x, test y); x is (N, 3, image_size, image_size), standardised."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16
    labels = torch.tensor(digits.target, dtype=torch.long)
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = ((images - images.mean()) / images.std()).repeat(1, 3, 1, 1)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1234))  # fixed split
    test, train = order[:TEST_IMAGES], order[TEST_IMAGES:]
    return images[train], labels[train], images[test], labels[test]


def build_model(fused: bool, args: argparse.Namespace) -> torch.nn.Module:
    # The naive model draws the weights; the fused one takes them (same state_dict keys).
    torch.manual_seed(args.seed)
    naive = shufflenet_v1(args.groups, args.width, num_classes=10, fused=False)
    if not fused:
        return naive
    model = shufflenet_v1(args.groups, args.width, num_classes=10, fused=True)
    model.load_state_dict(naive.state_dict())
    return model


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y), 256):
            logits = model(x[start:start + 256].to(device, next(model.parameters()).dtype))
            correct += (logits.argmax(1).cpu() == y[start:start + 256]).sum().item()
    model.train()
    return correct / len(y)


def train_one(fused: bool, args: argparse.Namespace, data, device: torch.device, rank: int, world: int) -> dict:
    from tqdm import tqdm

    train_x, train_y, test_x, test_y = data
    model = build_model(fused, args).to(device, DTYPES[args.dtype])
    net = model
    if args.ddp:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=4e-5)
    # The paper's schedule: learning rate decayed linearly to 0.
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / args.steps)
    batches = torch.Generator().manual_seed(args.seed)  # the same batches for every implementation and rank
    per_rank = args.batch // world
    losses, step_seconds = [], []
    name = "fused" if fused else "naive"
    with tqdm(range(args.steps), desc=f"train {name}", disable=rank != 0 or args.no_progress, file=sys.stderr) as bar:
        for _ in bar:
            index = torch.randint(0, len(train_y), (args.batch,), generator=batches)
            index = index[rank * per_rank:(rank + 1) * per_rank]
            x, y = train_x[index].to(device, DTYPES[args.dtype]), train_y[index].to(device)
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            schedule.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            step_seconds.append(time.perf_counter() - start)
            global_loss = loss.detach()
            if args.ddp:  # the loss of the global batch, as a single process would see it
                torch.distributed.all_reduce(global_loss)
                global_loss /= world
            losses.append(global_loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    # The first steps allocate and warm caches; images/s from the rest (or all, if short).
    timed = step_seconds[min(3, len(step_seconds) - 1):]
    result = {
        "implementation": name,
        "losses": losses,
        "images_per_s": per_rank * world * len(timed) / sum(timed),
        "step_ms_median": 1e3 * sorted(timed)[len(timed) // 2],
        "test_accuracy": evaluate(model, test_x, test_y, device),
    }
    if args.ddp:
        result["ranks_max_param_diff"] = max_parameter_difference(model)
    return result


def max_parameter_difference(model: torch.nn.Module) -> float:
    """The largest absolute difference between any rank's parameters and rank 0's."""
    device = next(model.parameters()).device
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    reference = flat.clone()
    torch.distributed.broadcast(reference, src=0)
    difference = (flat - reference).abs().max()
    torch.distributed.all_reduce(difference, op=torch.distributed.ReduceOp.MAX)
    return difference.item()


def plot(results: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for result, style in zip(results, ("-", "--")):
        ax.plot(range(1, len(result["losses"]) + 1), result["losses"], style,
                label=f"{result['implementation']} (test acc {result['test_accuracy']:.3f}, "
                      f"{result['images_per_s']:.0f} img/s)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title(title)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="shufflenet-bench train", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--fused", action="store_true", help="train the fused model (alone, unless --naive too)")
    parser.add_argument("--naive", action="store_true", help="train the naive model (alone, unless --fused too)")
    parser.add_argument("--steps", type=int, default=150,
                        help="SGD steps (too few end near chance accuracy: benchmarks/README.md)")
    parser.add_argument("--batch", type=int, default=64, help="global batch (split across DDP ranks)")
    parser.add_argument("--lr", type=float, default=0.02, help="initial learning rate, decayed linearly to 0")
    parser.add_argument("--groups", type=int, default=3, help="ShuffleNet V1 g")
    parser.add_argument("--width", type=float, default=0.5, help="ShuffleNet V1 width multiplier")
    parser.add_argument("--image-size", type=int, default=32, help="digits upsampled to this size")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                        help="float64: fused and naive agree far more closely (rounding, not a difference)")
    parser.add_argument("--seed", type=int, default=0, help="weights and batch order")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if present")
    parser.add_argument("--ddp", action="store_true", help="DistributedDataParallel; run under torchrun")
    parser.add_argument("--out", help="directory for train_results.json and loss_curve.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    return args


def loss_gap_summary(gaps: list[float], dtype: str) -> str:
    """How the fused and naive loss curves part, in words (see the module docstring)."""
    largest = max(range(len(gaps)), key=lambda i: gaps[i])
    parted = next((i + 1 for i, gap in enumerate(gaps) if gap > 1e-3), None)
    text = (f"loss gap fused vs naive: {gaps[0]:.1e} at step 1, largest {gaps[largest]:.2e} at step {largest + 1}"
            + (f", above 1e-3 from step {parted}" if parted else ", never above 1e-3"))
    if dtype == "float32":
        text += (" (same weights and batches; float32 rounding differs between the implementations and training "
                 "amplifies it step by step: compare the curves, not single steps; in --dtype float64 the first steps "
                 "agree far more closely)")
    return text


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    implementations = [flag for flag, on in ((True, args.fused), (False, args.naive)) if on] or [True, False]
    device = pick_device(args.device)
    rank, world = 0, 1
    if args.ddp:
        if "RANK" not in os.environ:
            raise SystemExit("--ddp needs torchrun (RANK/WORLD_SIZE are not set)")
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        if args.batch % world:
            raise SystemExit(f"--batch ({args.batch}) must be divisible by the world size ({world})")
    try:
        data = load_digits(args.image_size)
        results = [train_one(fused, args, data, device, rank, world) for fused in implementations]
    finally:
        if args.ddp:
            torch.distributed.destroy_process_group()
    if rank != 0:
        return 0
    info = provenance(device, ["train", *argv])
    info.update(world_size=world, load_average_end=load_average())
    summary = {"provenance": info, "args": vars(args), "results": results}
    if len(results) == 2:
        gaps = [abs(a - b) for a, b in zip(results[0]["losses"], results[1]["losses"])]
        summary["loss_gaps"] = gaps
        summary["max_loss_gap"] = max(gaps)
        summary["first_step_loss_gap"] = gaps[0]
        # Rounding differences grow step by step (as between any two float implementations,
        # or one run on 1 and on 2 threads): the first step at which the curves part.
        summary["first_step_gap_above_1e-3"] = next((i + 1 for i, gap in enumerate(gaps) if gap > 1e-3), None)
    for result in results:
        line = (f"{result['implementation']}: {result['images_per_s']:.1f} img/s, step {result['step_ms_median']:.1f} ms, "
                f"loss {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}, test accuracy {result['test_accuracy']:.3f}")
        if "ranks_max_param_diff" in result:
            line += f", max parameter difference across {world} ranks {result['ranks_max_param_diff']:.3g}"
        print(line)
        if result["test_accuracy"] <= CHANCE_ACCURACY + 0.05:
            print(f"  {result['implementation']}: test accuracy {result['test_accuracy']:.2f} is about chance "
                  f"({CHANCE_ACCURACY:.2f}, 10 classes): train longer (--steps 150 or more)")
    if "max_loss_gap" in summary:
        ratio = results[0]["images_per_s"] / results[1]["images_per_s"]
        print(f"fused/naive images/s {ratio:.2f}x")
        print(loss_gap_summary(summary["loss_gaps"], args.dtype))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "train_results.json"), "w") as f:
            json.dump(summary, f, indent=1)
        title = (f"ShuffleNet V1 {args.width:g}x g{args.groups}, digits {args.image_size}px, batch {args.batch}"
                 + (f", DDP x{world}" if args.ddp else ""))
        plot(results, os.path.join(args.out, "loss_curve.png"), title)
    return 0

