"""Sandwich step cost: one max+min+random step vs the three subnets' standalone train steps.

Run: ``.venv/bin/python benchmarks/bench_train.py [--model vit_b --img-size 256 --batch 2 --repeats 3]``.

Prints, measured side by side (interleaved repeats, order alternating) on the same
real batch (ISBI 2012 EM, 256 px tiles, box prompts):
- the sandwich step (shared supernet: max + min + random forward/backward, one
  AdamW step) over the sum of three standalone train steps (each subnet exported
  with ``get_active_subnet`` and trained on its own: forward/backward + AdamW);
  target <= 1.10;
- training images per second of the sandwich step;
- peak memory (VmHWM, max RSS) of a separate process that only runs three
  sandwich steps (model, gradients, AdamW state, activations); target <= 4 GB.
Random initialisation (the numbers do not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from supersam.data import DataConfig, load_split, prepare_sample
from supersam.model.elastic import SuperSam
from supersam.model.sam import build_sam_model
from supersam.model.space import SearchSpace
from supersam.stages.train.config import TrainConfig
from supersam.stages.train.distributed import DistContext
from supersam.stages.train.optim import build_optimizer, build_scheduler, set_trainable
from supersam.stages.train.sandwich import batch_loss, draw_subnets, frozen_prompts, train_step

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012_em"
CPU = DistContext(device=torch.device("cpu"))


def batch(img_size: int, n: int) -> list:
    """``n`` real EM tiles with 8 box-prompted objects each."""
    cfg = DataConfig(root=str(DATA), patch=256, prompt="box", max_objects=8)
    ds = load_split(cfg, "train")
    return [prepare_sample(ds[i], img_size, "box", 8, 20, np.random.default_rng(i)) for i in range(n)]


def setup(model: str, img_size: int):
    supernet = SuperSam(build_sam_model(model, img_size), SearchSpace.for_arch(model))
    cfg = TrainConfig(iterations=100, batch_size=2, device="cpu")
    params = set_trainable(supernet, cfg.trainable)
    opt = build_optimizer(params, cfg)
    return supernet, cfg, params, opt, build_scheduler(opt, cfg)


def standalone_step(sam, opt, inputs) -> None:
    """One plain train step of an exported subnet: prompts, forward/backward, AdamW."""
    prompts = frozen_prompts(sam, inputs)
    loss, _ = batch_loss(sam, inputs, prompts, len(inputs), torch.device("cpu"), False)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_gb() -> float:
    """This process's peak RSS in GB: VmHWM (Linux; unlike ru_maxrss it is not inherited
    from the forking parent across exec), else getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def memory_child(model: str, img_size: int, n: int, steps: int) -> None:
    """Run sandwich steps only and print the peak RSS (GB) as JSON."""
    supernet, cfg, params, opt, sched = setup(model, img_size)
    inputs = batch(img_size, n)
    for it in range(steps):
        train_step(supernet, opt, sched, params, inputs, n, it, cfg, CPU)
    print(json.dumps({"max_rss_gb": peak_rss_gb()}))


def measure_memory(args) -> float:
    """Peak RSS (GB) of a fresh process running 3 sandwich steps."""
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-child",
            "--model",
            args.model,
            "--img-size",
            str(args.img_size),
            "--batch",
            str(args.batch),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(child.stdout.strip().splitlines()[-1])["max_rss_gb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--img-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args.model, args.img_size, args.batch, 3)
    rss = measure_memory(args)  # first, while this process is still small
    torch.manual_seed(0)
    supernet, cfg, params, opt, sched = setup(args.model, args.img_size)
    inputs = batch(args.img_size, args.batch)
    standalone = []
    for kind, sub in zip(*draw_subnets(supernet.space, cfg.seed, 0, 1)):
        supernet.set_active_subnet(sub)
        sam = supernet.get_active_subnet().train()
        for name, p in sam.named_parameters():
            p.requires_grad_(not name.startswith("prompt_encoder"))
        sopt = torch.optim.AdamW([p for p in sam.parameters() if p.requires_grad], lr=cfg.lr)
        standalone.append((kind, sam, sopt))
    sandwich = lambda: train_step(supernet, opt, sched, params, inputs, args.batch, 0, cfg, CPU)  # noqa: E731
    sandwich(), [standalone_step(s, o, inputs) for _, s, o in standalone]  # warm-up
    t_sw, t_sa = [], {k: [] for k, _, _ in standalone}
    for r in range(args.repeats):
        order = ["sandwich", "standalone"] if r % 2 == 0 else ["standalone", "sandwich"]
        for what in order:
            if what == "sandwich":
                t_sw.append(timed(sandwich))
            else:
                for kind, sam, sopt in standalone:
                    t_sa[kind].append(timed(lambda: standalone_step(sam, sopt, inputs)))
    sums = [sum(t_sa[k][r] for k in t_sa) for r in range(args.repeats)]
    med = statistics.median
    print(
        f"{args.model} @ {args.img_size} px, batch {args.batch}, CPU threads {torch.get_num_threads()}, repeats "
        f"{args.repeats}"
    )
    for kind in t_sa:
        print(f"  standalone {kind:7s} step: median {med(t_sa[kind]):.3f} s")
    print(f"  sum of standalone steps:     median {med(sums):.3f} s  (min {min(sums):.3f})")
    print(f"  sandwich step (max+min+rnd): median {med(t_sw):.3f} s  (min {min(t_sw):.3f})")
    print(
        f"  ratio sandwich / sum:        median {med(t_sw) / med(sums):.3f}  min-based {min(t_sw) / min(sums):.3f}  "
        "(target <= 1.10)"
    )
    print(
        f"  training images/s:           {args.batch / med(t_sw):.3f}  ({3 * args.batch / med(t_sw):.3f} "
        "subnet-images/s)"
    )
    print(f"  peak RSS, sandwich only:     {rss:.2f} GB  (target <= 4 GB)")


if __name__ == "__main__":
    main()
