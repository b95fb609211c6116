"""Subnet search: OpenTuner vs random search at the same budget, and evaluator throughput.

Run: ``.venv/bin/python benchmarks/bench_search.py [--seeds 5 --budget 60 --n-images 4]``.

1. Techniques, side by side, same budget and seeds, on two landscapes:
   - ``tiny-real``: a random-init tiny supernet evaluated for real (SubnetEvaluator,
     EM data, 128 px). Random weights give a noise-like mIoU landscape.
   - ``vit_b-synthetic``: the full vit_b space (121.5M subnets) with exact analytic
     params (``subnet_params`` at 1024 px) and a structured synthetic mIoU
     (additive per-block importance, paper-like: blocks 1,2,5,6,9 cheap to drop,
     narrower MLP dims cost accuracy in proportion to the block's importance).
   Constraints come from a 200-subnet random sample: max params = its median, min mIoU
   such that 10 of the 200 (5%) are feasible.
   Printed per technique: evaluations until the first feasible subnet, best params
   reached (objective min-params), and the OpenTuner / random ratios.
2. Evaluator throughput (subnets per minute, random subnets) for tiny at 128 px and
   vit_b at 256 px on CPU, fp32 and bf16.
A memo cache shared across runs makes repeated real evaluations free (the evaluator is
deterministic), so part 1 counts evaluations, not seconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from supersam.artifacts.records import SupernetMeta
from supersam.data import DataConfig, prepare_split
from supersam.measure.scoring import SubnetEvaluator
from supersam.model.elastic import SuperSam
from supersam.model.sam import build_sam_model
from supersam.model.space import SearchSpace, SubnetConfig, subnet_params
from supersam.stages.search import Constraints, SubnetEncoding, run_search

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012_em"
IMPORTANCE = [0.6, 0.004, 0.006, 0.05, 0.04, 0.008, 0.007, 0.06, 0.045, 0.009, 0.035, 0.05]


def em_inputs(img_size: int, n_images: int):
    return prepare_split(DataConfig(root=str(DATA), patch=256, max_objects=8), "val", img_size, n_images=n_images)


def tiny_real(n_images: int):
    torch.manual_seed(0)
    supernet = SuperSam(build_sam_model("tiny"), SearchSpace.for_arch("tiny"), SupernetMeta("tiny", 128, False, "none"))
    evaluator = SubnetEvaluator(supernet, em_inputs(128, n_images), torch.device("cpu"))
    return SubnetEncoding.from_space(supernet.space), evaluator.evaluate


def _miou_cost(block: int, width: int) -> float:
    """Synthetic mIoU cost of block ``block`` at MLP ``width`` (0 = dropped)."""
    if width == 0:
        return IMPORTANCE[block]
    return IMPORTANCE[block] * 0.6 * (1 - width / 3072) ** 1.5


def vit_b_synthetic():
    space = SearchSpace.for_arch("vit_b")

    def evaluate(sub):
        miou = 0.92 - sum(_miou_cost(b, d) for b, d in enumerate(sub.mlp_dims))
        return {"params": subnet_params("vit_b", 1024, sub), "miou": miou, "miou_oracle": miou}

    return SubnetEncoding.from_space(space), evaluate


def synthetic_optimum(enc: SubnetEncoding, cons: Constraints) -> int:
    """Exact smallest feasible params of the additive synthetic landscape (Pareto DP over blocks)."""
    full = subnet_params("vit_b", 1024, enc.largest())
    front = [(0, 0.0)]  # (params removed, mIoU cost), Pareto-optimal partial assignments
    for b, choices in enumerate(enc.block_choices()):
        dims = [3072] * 12
        options = []
        for w in choices:
            dims[b] = w
            kept = tuple(i for i, d in enumerate(dims) if d)
            removed = full - subnet_params("vit_b", 1024, SubnetConfig(kept, tuple(dims)))
            options.append((removed, _miou_cost(b, w)))
        merged = sorted({(p + q, c + d) for p, c in front for q, d in options}, key=lambda t: (-t[0], t[1]))
        front, best_cost = [], float("inf")
        for removed, cost in merged:
            if cost < best_cost - 1e-15:
                front.append((removed, cost))
                best_cost = cost
    return min(full - r for r, c in front if 0.92 - c >= cons.min_miou - 1e-12)


def memo(fn):
    cache = {}

    def cached(sub):
        if sub not in cache:
            cache[sub] = fn(sub)
        return cache[sub]

    return cached


def constraints_from_sample(enc, evaluate, n=200, seed=12345, feasible=10) -> Constraints:
    """max params = median of sampled params; min mIoU such that ``feasible`` of the ``n`` samples meet both."""
    rng = random.Random(seed)
    results = [evaluate(enc.decode(enc.random_values(rng))) for _ in range(n)]
    max_params = sorted(r["params"] for r in results)[n // 2]
    small = sorted((r["miou"] for r in results if r["params"] <= max_params), reverse=True)
    return Constraints(max_params, small[feasible - 1])


def compare(name, enc, evaluate, seeds, budget, workdir, optimum=None):
    evaluate = memo(evaluate)
    cons = constraints_from_sample(enc, evaluate)
    known = f"; exact optimum {optimum(enc, cons) / 1e6:.3f}M params" if optimum else ""
    print(
        f"\n[{name}] space {enc.size():,} subnets; params <= {cons.max_params:,}, miou >= {cons.min_miou:.4f}; "
        f"budget {budget}, seeds {seeds}{known}"
    )
    summary = {}
    for technique in ("opentuner", "random"):
        firsts, bests, seconds = [], [], []
        for seed in range(seeds):
            t0 = time.perf_counter()
            state = run_search(enc, evaluate, cons, technique, budget=budget, seed=seed, workdir=workdir)
            seconds.append(time.perf_counter() - t0)
            best = state.best()
            firsts.append(state.first_feasible() or budget + 1)
            bests.append(best.params if best.feasible else float("inf"))
        summary[technique] = (firsts, bests)
        ok = [b for b in bests if b != float("inf")]
        print(
            f"  {technique:9s} first feasible at eval {firsts} (median {statistics.median(firsts)}); "
            f"best params {[f'{b / 1e6:.3f}M' if b != float('inf') else 'none' for b in bests]} "
            f"(median {statistics.median(ok) / 1e6 if ok else float('nan'):.3f}M, found {len(ok)}/{seeds}); "
            f"search overhead+eval {statistics.median(seconds):.2f} s/run"
        )
    (f_ot, b_ot), (f_rs, b_rs) = summary["opentuner"], summary["random"]
    ratio_first = statistics.median(f_ot) / statistics.median(f_rs)
    both = [(a, b) for a, b in zip(b_ot, b_rs) if a != float("inf") and b != float("inf")]
    ratio_best = statistics.median(a / b for a, b in both) if both else float("nan")
    wins = sum(a < b for a, b in zip(b_ot, b_rs))
    print(
        f"  ratio opentuner/random: evaluations to first feasible {ratio_first:.2f}, "
        f"best params {ratio_best:.3f} (opentuner strictly smaller in {wins}/{seeds} seeds)"
    )


def throughput(label, supernet, inputs, amp, n_subnets, passes=2):
    """Mean over random subnets of the fastest of ``passes`` evaluations (robust to a busy machine)."""
    evaluator = SubnetEvaluator(supernet, inputs, torch.device("cpu"), amp=amp)
    gen = torch.Generator().manual_seed(0)
    evaluator.evaluate(supernet.space.max_subnet())  # warm-up
    subnets = [supernet.space.sample(gen) for _ in range(n_subnets)]
    best = [float("inf")] * n_subnets
    for _ in range(passes):
        for i, s in enumerate(subnets):
            t0 = time.perf_counter()
            evaluator.evaluate(s)
            best[i] = min(best[i], time.perf_counter() - t0)
    per = statistics.mean(best)
    print(
        f"  {label:28s} {len(inputs)} images: {per:6.2f} s/subnet = {60 / per:7.1f} subnets/min "
        f"({per / len(inputs):.3f} s/image)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=60)
    parser.add_argument("--n-images", type=int, default=4)
    parser.add_argument("--subnets", type=int, default=5, help="random subnets timed per throughput row")
    parser.add_argument("--skip-vit-b", action="store_true")
    parser.add_argument("--skip-techniques", action="store_true", help="only the throughput part")
    args = parser.parse_args()
    if not args.skip_techniques:
        with tempfile.TemporaryDirectory() as workdir:
            compare("vit_b-synthetic", *vit_b_synthetic(), args.seeds, args.budget, workdir, synthetic_optimum)
            compare("tiny-real", *tiny_real(args.n_images), args.seeds, args.budget, workdir)
    print("\n[evaluator throughput, CPU, random subnets of the paper space]")
    torch.manual_seed(0)
    tiny = SuperSam(build_sam_model("tiny"), SearchSpace.for_arch("tiny"), SupernetMeta("tiny", 128, False, "none"))
    throughput("tiny 128 px fp32", tiny, em_inputs(128, args.n_images), False, args.subnets * 4)
    if not args.skip_vit_b:
        vit_b = SuperSam(
            build_sam_model("vit_b", 256), SearchSpace.for_arch("vit_b"), SupernetMeta("vit_b", 256, False, "none")
        )
        inputs = em_inputs(256, args.n_images)
        throughput("vit_b 256 px fp32", vit_b, inputs, False, args.subnets)
        throughput("vit_b 256 px bf16 autocast", vit_b, inputs, True, args.subnets)


if __name__ == "__main__":
    main()
