"""Compiled evaluation without recompiles: static shapes with the last batch padded, against a dynamic batch.

After the compiled training step (batch B), evaluation batches of E and a last partial batch P < E through `eager`,
`static + pad` (the scripts' --compile: `training.evaluation_model`, P padded to E by `engine.padded_forward`),
`dynamic` (dynamic=True) and `automatic` (torch's default): the first calls' seconds, ms per batch after them and
the graphs compiled for evaluation (1 = no recompile); the variants take turns over --rounds, median [min-max].

    python benchmarks/bench_compile.py                          # CPU: the demo's model, B 16, E 24, P 7
    python benchmarks/bench_compile.py --device cuda --full     # the full-size model in bf16, B 32, E 48, P 13
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import timm
import torch
from common import FT_FULL, report, spread, sync
from torch._dynamo.utils import counters

import engine
import modeling_finetune  # noqa: F401  (registers the models)
import training

VARIANTS = ("eager", "static + pad", "dynamic", "automatic")


def demo_config() -> dict:
    """The demo's model (run_class_finetuning.DEMO_DEFAULTS), in common's configuration format."""
    from run_class_finetuning import DEMO_DEFAULTS as d

    return dict(model=d["model"], img=d["input_size"], frames=d["num_frames"], classes=d["nb_classes"],
                kwargs=dict(depth=d["depth"], lg_region_size=d["lg_region_size"], img_size=d["input_size"],
                            lg_classify_token_type=d["lg_classify_token_type"], attn_type="local_global",
                            all_frames=d["num_frames"], tubelet_size=2, use_mean_pooling=True, init_scale=0.001))


def measure(variant: str, cfg: dict, device: torch.device, amp: str, train_batch: int, eval_batch: int,
            partial: int, steps: int, train_first: bool = True) -> dict:
    """One variant from a fresh dynamo state: the compiled training step (`train_first`), then evaluation."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = timm.create_model(cfg["model"], num_classes=cfg["classes"], fusion="add", **cfg["kwargs"]).to(device)
    precision = engine.Precision(amp, None)
    clip = (3, cfg["frames"], cfg["img"], cfg["img"])
    if train_first and variant != "eager":
        with precision.autocast(device):
            logits = torch.compile(model.train())(torch.randn(train_batch, *clip, device=device))
        logits.float().logsumexp(1).mean().backward()
        model.zero_grad(set_to_none=True)
    before = counters["stats"]["unique_graphs"]
    forward = {"eager": model, "static + pad": training.evaluation_model(model, compile=True),
               "dynamic": torch.compile(model, dynamic=True), "automatic": torch.compile(model)}[variant]
    pad_to = eval_batch if variant == "static + pad" else None
    full, last = torch.randn(eval_batch, *clip, device=device), torch.randn(partial, *clip, device=device)
    model.eval()

    def call(x: torch.Tensor) -> float:
        sync(device)
        start = time.perf_counter()
        with torch.no_grad(), precision.autocast(device):
            engine.padded_forward(forward, x, pad_to)
        sync(device)
        return time.perf_counter() - start

    first_full, first_partial = call(full), call(last)
    full_ms = 1000 * float(np.median([call(full) for _ in range(steps)]))
    partial_ms = 1000 * float(np.median([call(last) for _ in range(steps)]))
    return dict(first_full_s=first_full, first_partial_s=first_partial, full_ms=full_ms, partial_ms=partial_ms,
                clips_per_s=1000 * eval_batch / full_ms, eval_graphs=counters["stats"]["unique_graphs"] - before)


def compile_rows(cfg: dict, device: torch.device, amp: str, batch: int, eval_batch: int, partial: int, steps: int,
                 rounds: int) -> list[dict]:
    """The variants taking turns over `rounds`: the spread of each figure; the graphs of the last round."""
    runs = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            runs[variant].append(measure(variant, cfg, device, amp, batch, eval_batch, partial, steps))
    return [dict(variant=variant, **{key: spread([r[key] for r in results]) for key in results[0]
                                     if key != "eval_graphs"}, eval_graphs=results[-1]["eval_graphs"])
            for variant, results in runs.items()]


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    cfg = FT_FULL if args.full else demo_config()
    amp = "bf16" if device.type == "cuda" else "none"
    batch, partial = (32, 13) if args.full else (16, 7)
    torch.set_num_threads(args.threads)
    rows = compile_rows(cfg, device, amp, batch, int(1.5 * batch), partial, args.steps, args.rounds)
    report("compile", rows, model=cfg["model"], depth=cfg["kwargs"]["depth"], img=cfg["img"], fusion="add",
           device=str(device), amp=amp, train_batch=batch, eval_batch=int(1.5 * batch), partial=partial)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--full", action="store_true", help="the full-size model (default: the demo's)")
    p.add_argument("--steps", type=int, default=5, help="timed calls of each shape per round (their median)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
