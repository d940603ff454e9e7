"""Self-supervised MAE-DFER pretraining: masked appearance + motion (frame difference) reconstruction.

Takes the original script's flags and defaults, so the authors' VoxCeleb2 command line runs unchanged (one
process, or torchrun for several), plus --amp, --compile, --data_root, --save_recon and --demo.
`python run_mae_pretraining.py --demo` pretrains a small LGI-Former on the synthetic demo videos on the CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import timm
import torch
from tensorboardX import SummaryWriter
from timm.optim import create_optimizer_v2

import datasets
import engine
import engine_pretrain
import modeling_pretrain  # noqa: F401  (registers the models in timm)
import utils
from data_check import DataCheckError, check_lists
from datasets_pretrain import build_pretrain_dataset
from reconstruction import reconstruct, save_reconstruction_grid

# The demo's configuration: defaults that --demo puts in place of the original ones (explicit flags still win).
# Raw-pixel targets: with per-patch normalised ones this small model stays at the predict-zero loss for the
# demo's budget (README, Pretraining demo).
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
    add = p.add_argument
    add("--batch_size", default=64, type=int)
    add("--epochs", default=800, type=int)
    add("--save_ckpt_freq", default=50, type=int)
    # Model
    add("--model", default="pretrain_videomae_base_patch16_224", type=str)
    add("--decoder_depth", default=4, type=int)
    add("--mask_type", default="tube", choices=["random", "tube", "part_window"])
    add("--part_win_size", type=int, nargs="+", default=(2, 2, 10), help="(t, h, w) in tokens; t is unused")
    add("--part_apply_symmetry", type=str, default=None, choices=["global", "local"])
    add("--mask_ratio", default=0.75, type=float)
    add("--input_size", default=224, type=int)
    add("--drop_path", type=float, default=0.0)
    add("--normlize_target", default=True, type=str2bool)
    add("--encoder_depth", default=None, type=int)
    add("--attn_type", default="joint", choices=["joint", "local_global"])
    utils.add_lg_arguments(p)
    # Optimizer and schedule
    utils.add_optimizer_arguments(p, lr=1.5e-4, min_lr=1e-5, warmup_epochs=40)
    add("--color_jitter", type=float, default=0.0, help="unused, as in the original")
    add("--train_interpolation", type=str, default="bicubic", help="unused, as in the original")
    # Data
    add("--data_path", default="/path/to/list_kinetics-400", type=str, help="the video list (`<path> <label>`)")
    add("--data_root", default=None, type=str, help="resolve relative list paths against this folder (ours)")
    add("--imagenet_default_mean_and_std", default=True, action="store_true")
    add("--num_frames", type=int, default=16)
    add("--sampling_rate", type=int, default=4)
    add("--output_dir", default="")
    add("--log_dir", default=None)
    add("--no_augmentation", action="store_true", help="no multi-scale crop")
    add("--num_samples", type=int, default=1, help="clips per video read (repeated sampling)")
    add("--max_bad_samples", default=10, type=int,
        help="skip (and log) up to N unreadable videos per process, then stop (ours; the original read another)")
    # Targets
    add("--use_frame_diff_as_target", action="store_true")
    add("--no_use_frame_diff_as_target", action="store_false", dest="use_frame_diff_as_target",
        help="pixels only (ours: turns the demo's frame-difference target off)")
    add("--frame_diff_group_size", type=int, default=2)
    add("--target_diff_weight", type=float, default=None)
    # Run
    utils.add_run_arguments(p)
    add("--save_recon", type=int, default=0, metavar="N",
        help="after every epoch, write a PNG of N clips' reconstructions to <output_dir>/recon/ (ours)")
    add("--demo", action="store_true", help="pretrain on the built-in synthetic videos (CPU friendly)")
    return p


def create_model(args: argparse.Namespace) -> torch.nn.Module:
    """The pretraining model as the original script builds it (the encoder depth only for 'no_depth' models), built
    for --input_size (ours, as in fine-tuning)."""
    kwargs = dict(pretrained=False, img_size=args.input_size, drop_path_rate=args.drop_path, drop_block_rate=None,
                  decoder_depth=args.decoder_depth, num_frames=args.num_frames, **utils.lg_kwargs(args))
    if "no_depth" in args.model and args.encoder_depth is not None:
        kwargs["encoder_depth"] = args.encoder_depth
    return timm.create_model(args.model, **kwargs)


def create_optimizer(args: argparse.Namespace, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The original's optimizer: two groups, no weight decay for 1-D parameters, biases and the names in
    model.no_weight_decay() (matched exactly), no layer decay."""
    return create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
                               eps=args.opt_eps, **({"betas": tuple(args.opt_betas)} if args.opt_betas else {}))


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


def main(args: argparse.Namespace) -> None:
    device = utils.start_run(args)
    if args.demo and utils.is_main_process() and not Path(args.data_path).exists():
        from demo_data import make_demo_videos

        make_demo_videos(Path(args.data_path).parent)
    if args.distributed:
        torch.distributed.barrier()

    model = create_model(args)
    tubelet_size, patch_size = model.encoder.patch_embed.proj.kernel_size[:2]
    args.window_size = model.encoder.grid_size  # the token grid the masks are drawn on
    args.patch_size = (patch_size, patch_size)  # stored with the checkpoint's args, as the original does
    try:  # every listed video exists and every line parses: a bad list stops the run now, with file and line
        check_lists([args.data_path], None, args.data_root)
    except DataCheckError as err:
        raise SystemExit(str(err)) from None
    dataset = build_pretrain_dataset(args, skip_bad=True)
    objective = engine_pretrain.Objective(
        patch_size, tubelet_size, args.normlize_target,
        args.frame_diff_group_size if args.use_frame_diff_as_target else None, args.target_diff_weight)
    if args.target_diff_weight is not None and (not args.use_frame_diff_as_target or args.frame_diff_group_size != 2):
        raise ValueError("--target_diff_weight needs --use_frame_diff_as_target with --frame_diff_group_size 2")
    logging.info("%s; %d videos in %s", dataset.mask_generator, len(dataset), args.data_path)

    loader = datasets.build_loader(dataset, args, args.batch_size, train=True)
    model.to(device)
    model_without_ddp = model
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logging.info("model %s: %d parameters", args.model, n_parameters)

    total_batch_size = args.batch_size * utils.get_world_size()
    scale = total_batch_size / 256
    args.lr, args.min_lr, args.warmup_lr = args.lr * scale, args.min_lr * scale, args.warmup_lr * scale
    optimizer = create_optimizer(args, model_without_ddp)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    steps_per_epoch = len(dataset) // total_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{args.data_path}: {len(dataset)} videos, fewer than one global batch "
                         f"({total_batch_size} = batch_size x processes)")
    lr_schedule, wd_schedule = utils.schedules(args, steps_per_epoch)
    args.output_dir = args.output_dir or "."
    utils.check_output_dir(args)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    resumed = utils.auto_load_model(args, model_without_ddp, optimizer, scaler) or {}
    if args.compile:
        model = torch.compile(model)
    if args.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    # Resume where the checkpoint left off: the unfinished epoch's averages, then every RNG.
    start_step = getattr(args, "start_step", 0)
    before = resumed.get("args")
    if start_step and (before.batch_size, before.world_size) != (args.batch_size, args.world_size):
        raise utils.CheckpointError(f"{args.resume} stopped mid-epoch with batch {before.batch_size} x "
                                    f"{before.world_size} processes: resume it with the same")
    meters = engine.new_meters(resumed.get("train_meters") if start_step else None)
    bad_samples = datasets.BadSampleLog(args.max_bad_samples, resumed.get("bad_samples"))
    if len(resumed.get("rng") or []) == utils.get_world_size():
        utils.set_rng_state(resumed["rng"][utils.get_rank()])

    def save(epoch: int, step: int | None = None, meters=None, numbered: bool = False) -> None:
        seen = {k: v for rank_seen in utils.all_gather_objects(bad_samples.seen) for k, v in rank_seen.items()}
        extra = {"rng": utils.gather_rng_states(), "train_meters": engine.meters_state(meters) if meters else None,
                 "bad_samples": seen}
        utils.save_model(args, epoch, model_without_ddp, optimizer, scaler, step=step, numbered=numbered,
                         keep_last=args.keep_last_ckpts, extra=extra)

    def save_mid_epoch(step: int, meters) -> None:
        if args.save_every_steps > 0 and step < steps_per_epoch and \
                (epoch * steps_per_epoch + step) % args.save_every_steps == 0:
            save(epoch, step, meters)

    log_writer = SummaryWriter(args.log_dir or args.output_dir) if utils.is_main_process() else None
    recon_samples = fixed_samples(dataset, args.save_recon) if args.save_recon and utils.is_main_process() else None
    logging.info("global batch %d, peak lr %.3g, %d steps per epoch, %d epochs", total_batch_size, args.lr,
                 steps_per_epoch, args.epochs)
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        # This rank's clips of the epoch already seen are skipped.
        loader.sampler.set_epoch(epoch, start=start_step * args.batch_size)
        dataset.set_epoch(epoch)
        stats = engine_pretrain.train_one_epoch(
            model, loader, optimizer, device, epoch, objective, scaler, args.amp, args.clip_grad, log_writer,
            start_steps=epoch * steps_per_epoch, lr_schedule_values=lr_schedule, wd_schedule_values=wd_schedule,
            num_samples=args.num_samples, last_checkpoint=lambda: utils.latest_checkpoint(args.output_dir),
            start_step=start_step, meters=meters, on_step=save_mid_epoch, bad_samples=bad_samples)
        start_step, meters = 0, None
        # checkpoint-last.pth every epoch; checkpoint-<epoch>.pth as the original
        save(epoch, numbered=(epoch + 1) % args.save_ckpt_freq == 0 or epoch + 1 == args.epochs)
        if utils.is_main_process():
            with open(Path(args.output_dir) / "log.txt", "a") as f:
                f.write(json.dumps({**{f"train_{k}": v for k, v in stats.items()}, "epoch": epoch,
                                    "n_parameters": n_parameters}) + "\n")
            logging.info("epoch %d: loss %.4f, lr %.3g", epoch, stats["loss"], stats["lr"])
        if recon_samples is not None:
            videos, masks = recon_samples
            images = reconstruct(model_without_ddp, videos.to(device), masks.to(device), objective)
            save_reconstruction_grid(images, Path(args.output_dir) / "recon" / f"epoch_{epoch:03d}.png",
                                     title=f"{args.model}, epoch {epoch}, loss {stats['loss']:.4f}")
    logging.info("training time %.0f s", time.time() - start)


if __name__ == "__main__":
    main(utils.parse_args(get_args_parser(), DEMO_DEFAULTS))
