"""Self-supervised MAE-DFER pretraining: masked appearance + motion (frame difference) reconstruction.

Takes the original script's flags and defaults, so the authors' VoxCeleb2 command line runs unchanged (one
process, or torchrun for several), plus --amp, --compile, --data_root, --save_recon and --demo.
`python run_mae_pretraining.py --demo` pretrains a small LGI-Former on the synthetic demo videos on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from tensorboardX import SummaryWriter
from torch import nn

import cli
import datasets
import engine
import engine_pretrain
import modeling_pretrain  # noqa: F401  (registers the models in timm)
import preemption
import rng
import schedules
import training
import utils
from datasets_pretrain import build_pretrain_dataset
from reconstruction import reconstruct, save_reconstruction_grid

# The demo's configuration: defaults that --demo puts in place of the original ones (explicit flags still win).
# Raw-pixel targets: with per-patch normalised ones this small model stays at the predict-zero loss for the
# demo's budget (docs/PRETRAIN.md).
DEMO_DEFAULTS = dict(
    model="pretrain_videomae_tiny_dim128_no_depth_patch16_64", encoder_depth=4, decoder_depth=2, input_size=64,
    num_frames=16, sampling_rate=1, mask_type="part_window", part_win_size=[2, 2, 4], mask_ratio=0.75,
    attn_type="local_global", lg_region_size=[2, 2, 4], use_frame_diff_as_target=True, normlize_target=False,
    batch_size=16, epochs=20, warmup_epochs=2, lr=2.4e-2, min_lr=1e-3, opt_betas=[0.9, 0.95], save_ckpt_freq=10,
    num_workers=1, save_recon=2, data_path="saved/data/demo_videos/info_clean.csv",
    data_root="saved/data/demo_videos", output_dir="saved/model/pretraining/demo")


def str2bool(text: str) -> bool:
    """--normlize_target True/False. (The original's type=bool read any non-empty text, even 'False', as True.)"""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("MAE-DFER pretraining", add_help=True)
    g = cli.make_groups(p)
    cli.add_optimizer_arguments(g.optimizer, epochs=800, lr=1.5e-4, min_lr=1e-5, warmup_epochs=40)

    add = g.model.add_argument
    add("--model", default="pretrain_videomae_base_patch16_224", type=str,
        help="model name in timm's registry, e.g. pretrain_videomae_base_dim512_no_depth_patch16_160 (the released "
             "one)")
    add("--decoder_depth", default=4, type=int, help="decoder blocks")
    add("--mask_type", default="tube", choices=["random", "tube", "part_window"],
        help="masking: random tokens, tubes (the same frame mask for every frame), or tubes with the same number of "
             "visible tokens in each window (part_window)")
    add("--part_win_size", type=int, nargs="+", default=(2, 2, 10), metavar="N",
        help="(t, h, w) window of part_window masking, in tokens; t is unused")
    add("--part_apply_symmetry", type=str, default=None, choices=["global", "local"],
        help="part_window: a window's visible tokens all fall in its left or right half, one side per clip "
             "(global) or per window (local)")
    add("--mask_ratio", default=0.75, type=float, help="share of tokens masked")
    add("--input_size", default=224, type=int, help="frame side in pixels")
    add("--drop_path", type=float, default=0.0, help="stochastic depth rate")
    add("--encoder_depth", default=None, type=int, help="encoder depth of the no_depth models (the released one: 16)")
    add("--attn_type", default="joint", choices=["joint", "local_global"],
        help="LGI-Former blocks (local_global) or plain ViT blocks (joint)")
    cli.add_lg_arguments(g.model)
    add = g.model.add_argument  # the reconstruction target
    add("--normlize_target", default=True, type=str2bool,
        help="True/False: normalise each target patch by its mean and std (the original's spelling)")
    add("--use_frame_diff_as_target", action="store_true",
        help="reconstruct frame differences as well as pixels (the released pretraining)")
    g.ours.add_argument("--no_use_frame_diff_as_target", action="store_false", dest="use_frame_diff_as_target",
                        help="pixels only (turns the demo's frame-difference target off)")
    add("--frame_diff_group_size", type=int, default=2,
        help="frames per group: the first keeps its pixels, the others become differences to it")
    add("--target_diff_weight", type=float, default=None,
        help="weight of the difference part of the loss, the pixel part gets 1 - it (default: one loss over both)")

    add = g.augmentation.add_argument
    add("--no_augmentation", action="store_true", help="no multi-scale crop")
    add("--num_samples", type=int, default=1, help="clips per video read (repeated sampling)")

    add = g.data.add_argument
    add("--data_path", default="/path/to/list_kinetics-400", type=str, help="the video list (`<path> <label>`)")
    g.ours.add_argument("--data_root", default=None, type=str, help="resolve relative list paths against this folder")
    add("--num_frames", type=int, default=16, help="frames per clip")
    add("--sampling_rate", type=int, default=4, help="take every N-th frame")
    add("--output_dir", default="", help="checkpoints and logs go here")
    add("--log_dir", default=None, help="TensorBoard folder (default: --output_dir)")
    ours = g.ours.add_argument
    ours("--face_crop", default="auto", choices=["auto", "voxceleb2", "none"],
         help="cut VoxCeleb2's face box first; auto: when the list's path names voxceleb2, as the original")
    ours("--max_bad_samples", default=10, type=int,
         help="skip (and log) up to N unreadable videos per process, then stop (the original read another)")

    cli.add_run_arguments(g)
    g.run.add_argument("--save_ckpt_freq", default=50, type=int,
                       help="write checkpoint-<epoch>.pth every N epochs and after the last")
    ours("--save_recon", type=int, default=0, metavar="N",
         help="after every epoch, write a PNG of N clips' reconstructions to <output_dir>/recon/")
    ours("--demo", action="store_true", help="pretrain on the built-in synthetic videos (CPU friendly)")

    cli.add_common_ignored_arguments(g.ignored, color_jitter=0.0)
    g.ignored.add_argument("--train_interpolation", type=str, default="bicubic",
                           help="no interpolation choice is made, as in the original")
    return p


def create_model(args: argparse.Namespace) -> nn.Module:
    """The pretraining model as the original script builds it, built for --input_size (ours, as in fine-tuning)."""
    kwargs = dict(pretrained=False, img_size=args.input_size, drop_path_rate=args.drop_path, drop_block_rate=None,
                  decoder_depth=args.decoder_depth, num_frames=args.num_frames, **utils.lg_kwargs(args))
    if args.encoder_depth is not None:  # the no_depth models' depth; it overrides a fixed-depth model's
        kwargs["encoder_depth"] = args.encoder_depth
    return timm.create_model(args.model, **kwargs)


def fixed_samples(dataset, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` readable clips with their masks as epoch 0 draws them: the same pictures every epoch."""
    items = []
    for index in range(len(dataset)):
        item = dataset[index]
        if not isinstance(item, datasets.BadSample):
            items.append(item)
        if len(items) == count:
            break
    return torch.stack([v for v, _ in items]), torch.stack([m for _, m in items])


def make_demo_data(args: argparse.Namespace) -> None:
    if not Path(args.data_path).exists():
        from demo_data import make_demo_videos

        make_demo_videos(Path(args.data_path).parent)


def build_objective(args: argparse.Namespace, model: nn.Module) -> engine_pretrain.Objective:
    """The reconstruction targets of the model's patches: pixels (normalised per patch or not) or frame differences."""
    if args.target_diff_weight is not None and (not args.use_frame_diff_as_target or args.frame_diff_group_size != 2):
        raise ValueError("--target_diff_weight needs --use_frame_diff_as_target with --frame_diff_group_size 2")
    tubelet_size, patch_size = model.encoder.patch_embed.proj.kernel_size[:2]
    return engine_pretrain.Objective(
        patch_size=patch_size, tubelet_size=tubelet_size, normalize_target=args.normlize_target,
        frame_diff_group_size=args.frame_diff_group_size if args.use_frame_diff_as_target else None,
        target_diff_weight=args.target_diff_weight, num_samples=args.num_samples)


@dataclass
class Fit:
    """What the epoch loop trains with: the schedule, optimizer, the resumed state and the checkpointer."""

    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: schedules.Schedule
    state: training.ResumeState
    saver: training.Checkpointer
    log_writer: SummaryWriter | None


def prepare_fit(args: argparse.Namespace, run: training.Run, model: nn.Module, num_videos: int,
                objective: engine_pretrain.Objective, precision: engine.Precision) -> Fit:
    """Schedule and optimizer for the global batch; the state resumed from output_dir; the checkpointer."""
    global_batch = args.batch_size * run.process.world_size
    steps = training.steps_per_epoch(num_videos, global_batch, args.data_path)
    schedule = schedules.build_schedule(args, global_batch, steps)
    optimizer = training.create_optimizer(args, model, schedule.peak_lr, loss_scaling=precision.scaler is not None)
    state = training.resume(args, run, model, optimizer=optimizer, precision=precision,
                            max_bad_samples=args.max_bad_samples,
                            geometry=dict(batch_size=args.batch_size, processes=run.process.world_size))
    # Stored with the checkpoint's args, as the original does.
    saved_args = training.checkpoint_args(args, run, global_batch, window_size=model.encoder.grid_size,
                                          patch_size=(objective.patch_size, objective.patch_size))
    saver = training.Checkpointer(run, state, model, optimizer, saved_args, precision, epochs=args.epochs,
                                  save_ckpt_freq=args.save_ckpt_freq, save_every_steps=args.save_every_steps,
                                  keep_last=args.keep_last_ckpts)
    train_model = training.distributed_model(model, run, compile=args.compile)
    log_writer = training.log_writer(args, run)
    logging.info("global batch %d, peak lr %.3g, %d steps per epoch, %d epochs", global_batch, schedule.peak_lr,
                 steps, args.epochs)
    return Fit(train_model, optimizer, schedule, state, saver, log_writer)


def main(args: argparse.Namespace) -> None:
    run = training.prepare_run(args, lists=[args.data_path], nb_classes=None,
                               make_demo_data=lambda: make_demo_data(args))
    device, precision = run.device, run.precision()
    model = create_model(args)
    window_size = model.encoder.grid_size  # the token grid the masks are drawn on
    dataset = build_pretrain_dataset(args, window_size, skip_bad=True)
    objective = build_objective(args, model)
    logging.info("%s; %d videos in %s", dataset.mask_generator, len(dataset), args.data_path)
    with rng.seeded_rngs(args.seed):  # the masks' fit to the LGI regions, once (the RNGs put back)
        model.check_mask(torch.stack([torch.as_tensor(dataset.mask_generator()) for _ in range(8)]))
    loader = datasets.build_loader(dataset, args, args.batch_size, train=True, device=device)
    model.to(device)
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logging.info("model %s: %d parameters", args.model, n_parameters)
    fit = prepare_fit(args, run, model, len(dataset), objective, precision)
    recon_samples = fixed_samples(dataset, args.save_recon) if args.save_recon and run.is_main else None
    start = time.time()
    for epoch in range(fit.state.start_epoch, args.epochs):
        stats = train_epoch(args, run, fit, loader, objective, precision, epoch)
        training.write_log(run, {**{f"train_{k}": v for k, v in stats.items()}, "epoch": epoch,
                                 "n_parameters": n_parameters})
        logging.info("epoch %d: loss %.4f, lr %.3g", epoch, stats["loss"], stats["lr"])
        if recon_samples is not None:
            videos, masks = recon_samples
            images = reconstruct(model, videos.to(device), masks.to(device), objective)
            save_reconstruction_grid(images, run.output_dir / "recon" / f"epoch_{epoch:03d}.png",
                                     title=f"{args.model}, epoch {epoch}, loss {stats['loss']:.4f}")
    logging.info("training time %.0f s", time.time() - start)


def train_epoch(args: argparse.Namespace, run: training.Run, fit: Fit, loader: datasets.Loader,
                objective: engine_pretrain.Objective, precision: engine.Precision, epoch: int) -> dict:
    """One epoch (the rest of it when resumed part-way), then its checkpoint."""
    state, steps = fit.state, fit.schedule.steps_per_epoch
    recipe = engine.StepRecipe(precision, fit.schedule, max_norm=args.clip_grad, log_every=args.log_every)
    epoch_start = state.epoch_start(epoch, steps)
    loader.sampler.set_epoch(epoch, start=epoch_start.step * args.batch_size)  # this rank's clips already seen
    loader.dataset.set_epoch(epoch)
    with training.naming_last_checkpoint(run.output_dir), preemption.checkpoint_on_stop(fit.saver, epoch):
        stats = engine_pretrain.train_one_epoch(
            fit.train_model, loader, fit.optimizer, run.device, objective=objective, recipe=recipe,
            start=epoch_start, log_writer=fit.log_writer, on_step=fit.saver.mid_epoch(epoch, steps),
            bad_samples=state.bad_samples)
    fit.saver.end_of_epoch(epoch)
    return stats


if __name__ == "__main__":
    with training.process_group_closed(), preemption.stop_on_signals():
        main(cli.parse_args(get_args_parser(), DEMO_DEFAULTS))
