"""Fine-tune and evaluate MAE-DFER / MAE-DFER-CA on a DFER dataset (FERV39k, DFEW, MAFW, ...) or the built-in demo.

Takes the original script's flags and defaults, so the authors' command lines run unchanged (one process, or
torchrun for several), plus --fusion, --amp, --compile, --data_root and --demo. `python run_class_finetuning.py
--demo` generates the synthetic demo dataset and trains a small LGI-Former with the CA branch on the CPU.
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
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

import datasets
import engine
import modeling_finetune  # noqa: F401  (registers the models in timm)
import utils
from data_check import DataCheckError, check_lists
from datasets import DATASETS, BadSampleLog, build_dataset
from metrics import format_summary, write_test_report
from modeling_finetune import infer_fusion

# The demo's configuration: defaults that --demo puts in place of the original ones (explicit flags still win).
# It trains from scratch, so every layer gets the full learning rate (layer_decay 1).
DEMO_DEFAULTS = dict(
    data_set="DEMO", nb_classes=len(DATASETS["DEMO"].classes), data_path="saved/data/demo", data_root="saved/data/demo",
    model="vit_tiny_dim128_no_depth_patch16_64", depth=4, input_size=64, short_side_size=64, num_frames=16,
    sampling_rate=1, lg_region_size=[2, 2, 4], lg_classify_token_type="region", fusion="add", batch_size=16,
    epochs=30, warmup_epochs=3, lr=1e-2, layer_decay=1.0, num_sample=1, num_workers=1, test_num_segment=2,
    test_num_crop=2, mixup=0.0, cutmix=0.0, reprob=0.0, aa="rand-m3-n2-mstd0.5-inc1", drop_path=0.0,
    save_ckpt_freq=1000, output_dir="saved/model/finetuning/demo", dist_eval=True)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("MAE-DFER fine-tuning and evaluation", add_help=True)
    add = p.add_argument
    add("--batch_size", default=64, type=int)
    add("--epochs", default=30, type=int)
    add("--update_freq", default=1, type=int)
    add("--save_ckpt_freq", default=100, type=int)
    # Model
    add("--model", default="vit_base_patch16_224", type=str)
    add("--tubelet_size", type=int, default=2)
    add("--input_size", default=224, type=int)
    add("--drop", type=float, default=0.0)
    add("--attn_drop_rate", type=float, default=0.0)
    add("--drop_path", type=float, default=0.1)
    add("--disable_eval_during_finetuning", action="store_true", default=False)
    add("--model_ema", action="store_true", default=False)
    add("--model_ema_decay", type=float, default=0.9999)
    add("--model_ema_force_cpu", action="store_true", default=False)
    add("--attn_type", default="local_global", choices=["joint", "local_global"])
    utils.add_lg_arguments(p)
    add("--lg_classify_token_type", type=str, default="org", choices=["org", "region", "all"])
    add("--depth", default=None, type=int)
    add("--fusion", default=None, choices=["none", "add", "cat", "pos"],
        help="CA motion branch fusion (ours). Not given: that of the weights resumed or evaluated, else none")
    # Optimizer and schedule
    utils.add_optimizer_arguments(p, lr=1e-3, min_lr=1e-6, warmup_epochs=5)
    add("--layer_decay", type=float, default=0.75)
    # Augmentation
    add("--color_jitter", type=float, default=0.4)
    add("--num_sample", type=int, default=2)
    add("--aa", type=str, default="rand-m7-n4-mstd0.5-inc1")
    add("--smoothing", type=float, default=0.1)
    add("--train_interpolation", type=str, default="bicubic")
    add("--crop_pct", type=float, default=None)
    add("--short_side_size", type=int, default=224)
    add("--test_num_segment", type=int, default=5)
    add("--test_num_crop", type=int, default=3)
    add("--reprob", type=float, default=0.25)
    add("--remode", type=str, default="pixel")
    add("--recount", type=int, default=1)
    add("--resplit", action="store_true", default=False)
    add("--mixup", type=float, default=0.8)
    add("--cutmix", type=float, default=1.0)
    add("--cutmix_minmax", type=float, nargs="+", default=None)
    add("--mixup_prob", type=float, default=1.0)
    add("--mixup_switch_prob", type=float, default=0.5)
    add("--mixup_mode", type=str, default="batch")
    # Weights
    add("--finetune", default="", help="initialise from this (pretraining) checkpoint")
    add("--model_key", default="model|module", type=str)
    add("--model_prefix", default="", type=str)
    add("--init_scale", default=0.001, type=float)
    add("--use_mean_pooling", action="store_true")
    p.set_defaults(use_mean_pooling=True)
    add("--use_cls", action="store_false", dest="use_mean_pooling")
    # Data
    add("--data_path", default="/path/to/list_kinetics-400", type=str, help="folder with train/val/test.csv")
    add("--data_root", default=None, type=str, help="resolve relative CSV paths against this folder (ours)")
    add("--eval_data_path", default=None, type=str)
    add("--nb_classes", default=400, type=int)
    add("--imagenet_default_mean_and_std", default=True, action="store_true")
    add("--num_segments", type=int, default=1)
    add("--num_frames", type=int, default=16)
    add("--sampling_rate", type=int, default=4)
    add("--data_set", default="Kinetics-400", choices=list(DATASETS), type=str)
    add("--output_dir", default="")
    add("--log_dir", default=None)
    # Run
    utils.add_run_arguments(p)
    add("--save_ckpt", action="store_true")
    add("--no_save_ckpt", action="store_false", dest="save_ckpt")
    p.set_defaults(save_ckpt=True)
    add("--eval", action="store_true")
    add("--dist_eval", action="store_true", default=False)
    add("--enable_deepspeed", action="store_true", default=False)
    add("--val_metric", type=str, default="acc1",
        choices=["acc1", "acc5", "war", "uar", "weighted_f1", "micro_f1", "macro_f1"])
    add("--final_model", default="last", choices=["last", "best"],
        help="model for the final test: the last epoch (original protocol) or checkpoint-best (ours)")
    add("--save_feature", action="store_true", default=False)
    add("--max_bad_samples", default=10, type=int,
        help="skip (and log) up to N unreadable train / validation clips per process, then stop (ours)")
    add("--demo", action="store_true", help="train and test on the built-in synthetic dataset (CPU friendly)")
    return p


def create_model(args: argparse.Namespace) -> torch.nn.Module:
    """The fine-tune model exactly as the original script builds it, plus --fusion and the input size."""
    kwargs = dict(pretrained=False, img_size=args.input_size, num_classes=args.nb_classes,
                  all_frames=args.num_frames * args.num_segments, tubelet_size=args.tubelet_size,
                  drop_rate=args.drop, drop_path_rate=args.drop_path,
                  attn_drop_rate=args.attn_drop_rate, drop_block_rate=None, use_mean_pooling=args.use_mean_pooling,
                  init_scale=args.init_scale, lg_classify_token_type=args.lg_classify_token_type,
                  fusion=None if args.fusion == "none" else args.fusion, **utils.lg_kwargs(args))
    if "no_depth" in args.model and args.depth is not None:
        kwargs["depth"] = args.depth
    return timm.create_model(args.model, **kwargs)


def resolve_fusion(args: argparse.Namespace) -> str:
    """--fusion; when not given, that of the weights --resume (or auto-resume) loads, read off them, since the CA
    fork's checkpoints and command lines do not name it; else none (plain MAE-DFER, the original model).

    A --fusion that contradicts those weights is an error. --finetune weights (pretraining) have no CA branch and
    say nothing: the flag stands.
    """
    if args.resume:
        candidates = [Path(args.resume)]
    else:
        candidates = utils.resume_candidates(args.output_dir) if args.auto_resume else []
    path, found = None, None
    for candidate in candidates:  # auto-resume's rule: the newest that reads (auto_load_model warns about others)
        try:
            found = infer_fusion(utils.select_state_dict(utils.load_checkpoint(candidate)))
        except utils.CheckpointError:
            if args.resume:
                raise
            continue
        path = candidate
        break
    if found is None:
        return args.fusion or "none"
    if args.fusion is not None and args.fusion != found:
        hint = f"give --fusion {found}" + ("" if args.demo else " or leave the flag out")  # --demo sets add
        raise utils.CheckpointError(f"--fusion {args.fusion} contradicts {path}, whose weights are those of "
                                    f"--fusion {found}: {hint}")
    logging.info("--fusion %s: %s the weights of %s", found,
                 "read off" if args.fusion is None else "as given, agrees with", path)
    return found


def final_test(args, model, data_loader, device, epoch, header: str | None, checkpoint: str | None) -> dict:
    """Multi-view test: every view's softmax, merged per clip on rank 0, with all reports written."""
    records = engine.predict_views(data_loader, model, device, args.amp)
    gathered = [r for rank_records in utils.all_gather_objects(records) for r in rank_records]
    if not utils.is_main_process():
        return {}
    return write_test_report(args.output_dir, gathered, DATASETS[args.data_set].classes, header=header,
                             checkpoint=checkpoint, epoch=epoch)


def check_data(args: argparse.Namespace) -> None:
    """The fast data check (data_check.py) of the lists this run reads: a bad list stops it now, with file and line;
    its warnings (e.g. data other than the released checkpoints were trained on) are logged."""
    names = ["test.csv"]
    if not args.eval:
        names += ["train.csv"] + ([] if args.disable_eval_during_finetuning else [DATASETS[args.data_set].val_file])
    try:
        report = check_lists([Path(args.data_path) / name for name in dict.fromkeys(names)], args.nb_classes,
                             args.data_root, data_set=args.data_set)
    except DataCheckError as err:
        raise SystemExit(str(err)) from None
    for warning in report.warnings:
        logging.warning("data check: %s", warning)


def main(args: argparse.Namespace) -> torch.nn.Module:
    """Fine-tune (resuming what output_dir holds) and test, or only test with --eval; returns the model."""
    device = utils.start_run(args)
    if args.demo and utils.is_main_process() and not (Path(args.data_path) / "train.csv").exists():
        from demo_data import make_demo_dataset

        make_demo_dataset(args.data_path)
    if args.distributed:
        torch.distributed.barrier()
    args.output_dir = args.output_dir or "."
    utils.check_output_dir(args)
    args.fusion = resolve_fusion(args)

    check_data(args)
    dataset_test, args.nb_classes = build_dataset(is_train=False, test_mode=True, args=args)
    dataset_train = None if args.eval else build_dataset(is_train=True, test_mode=False, args=args)[0]
    dataset_val = None
    if not args.eval and not args.disable_eval_during_finetuning:
        dataset_val = build_dataset(is_train=False, test_mode=False, args=args)[0]
    loader_test = datasets.build_loader(dataset_test, args, args.batch_size)

    model = create_model(args)
    if args.finetune:
        utils.load_pretrained(model, args.finetune, args.model_key, args.model_prefix)
    model.to(device)
    model_without_ddp = model
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logging.info("model %s (fusion %s): %d trainable parameters", args.model, args.fusion, n_parameters)
    model_ema = ModelEmaV3(model, decay=args.model_ema_decay,
                           device="cpu" if args.model_ema_force_cpu else None) if args.model_ema else None

    total_batch_size = args.batch_size * args.update_freq * utils.get_world_size()
    args.lr, args.min_lr = args.lr * total_batch_size / 256, args.min_lr * total_batch_size / 256
    optimizer = create_optimizer_v2(model_without_ddp, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum, layer_decay=args.layer_decay, eps=args.opt_eps,
                                    **({"betas": tuple(args.opt_betas)} if args.opt_betas else {}))
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    resumed = utils.auto_load_model(args, model_without_ddp, optimizer, scaler, model_ema) or {}
    if args.compile:
        model = torch.compile(model)
    if args.distributed:
        # cablock.fc is never called and, with region pooling, the last block's third attention feeds nothing.
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)

    if args.eval:
        if not args.resume and not args.finetune:
            logging.warning("--eval without a checkpoint: testing an untrained model")
        stats = final_test(args, model, loader_test, device, epoch=None, header=None,
                           checkpoint=args.resume or args.finetune or None)
        if stats:
            logging.info(format_summary(stats, args.output_dir))
        return model_without_ddp

    loader_train = datasets.build_loader(dataset_train, args, args.batch_size, train=True)
    loader_val = None
    if dataset_val is not None:
        loader_val = datasets.build_loader(dataset_val, args, int(1.5 * args.batch_size),
                                           sequential=not args.dist_eval)
    steps_per_epoch = len(dataset_train) // total_batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"the training set has {len(dataset_train)} clips, fewer than one global batch "
                         f"({total_batch_size} = batch_size x update_freq x processes)")
    lr_schedule, wd_schedule = utils.schedules(args, steps_per_epoch)
    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        if args.batch_size % 2:
            raise ValueError(f"--batch_size {args.batch_size}: mixup / cutmix pair a batch's clips, it must be even")
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=args.nb_classes)
        criterion = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        criterion = torch.nn.CrossEntropyLoss()
    log_writer = SummaryWriter(args.log_dir or args.output_dir) if utils.is_main_process() else None
    log_path = Path(args.output_dir) / "log.txt"
    logging.info("global batch %d, peak lr %.3g, %d steps per epoch", total_batch_size, args.lr, steps_per_epoch)

    # Resume where the checkpoint left off: best metric, unreadable clips met, epoch averages, then every RNG.
    best, start_step = resumed.get("best_metric", -float("inf")), getattr(args, "start_step", 0)
    before = resumed.get("args")
    if start_step and (before.batch_size, before.update_freq, before.world_size) != (
            args.batch_size, args.update_freq, args.world_size):
        raise utils.CheckpointError(f"{args.resume} stopped mid-epoch with batch {before.batch_size} x update_freq "
                                    f"{before.update_freq} x {before.world_size} processes: resume it with the same")
    bad_samples = BadSampleLog(args.max_bad_samples, resumed.get("bad_samples"))
    meters = engine.new_meters(resumed.get("train_meters") if start_step else None)
    if args.start_epoch >= args.epochs:
        logging.warning("%s holds a finished run (%s): training skipped, the final test runs again",
                        args.output_dir, args.resume)
    if len(resumed.get("rng") or []) == utils.get_world_size():
        utils.set_rng_state(resumed["rng"][utils.get_rank()])
    elif resumed.get("rng"):
        logging.warning("the checkpoint's RNG states are of %d processes: continuing with fresh seeds",
                        len(resumed["rng"]))

    def resume_state(meters=None) -> dict:
        """What a checkpoint needs beyond the model and optimizer to continue bit-exactly (a collective)."""
        seen = {k: v for rank_seen in utils.all_gather_objects(bad_samples.seen) for k, v in rank_seen.items()}
        return {"rng": utils.gather_rng_states(), "best_metric": best, "bad_samples": seen,
                "train_meters": engine.meters_state(meters) if meters else None}

    def save_mid_epoch(step: int, meters) -> None:
        if args.save_ckpt and args.save_every_steps > 0 and step < steps_per_epoch and \
                (epoch * steps_per_epoch + step) % args.save_every_steps == 0:
            utils.save_model(args, epoch, model_without_ddp, optimizer, scaler, model_ema, step=step,
                             numbered=False, extra=resume_state(meters))

    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        # This rank's clips of the epoch already seen (steps x accumulation x batch) are skipped.
        loader_train.sampler.set_epoch(epoch, start=start_step * args.update_freq * args.batch_size)
        dataset_train.set_epoch(epoch)
        try:
            train_stats = engine.train_one_epoch(
                model, criterion, loader_train, optimizer, device, epoch, scaler, args.amp, args.clip_grad,
                model_ema, mixup_fn, log_writer, start_steps=epoch * steps_per_epoch, lr_schedule_values=lr_schedule,
                wd_schedule_values=wd_schedule, num_training_steps_per_epoch=steps_per_epoch,
                update_freq=args.update_freq, start_step=start_step, meters=meters, on_step=save_mid_epoch,
                bad_samples=bad_samples)
        except engine.NonFiniteLossError as err:
            last = utils.latest_checkpoint(args.output_dir)
            raise engine.NonFiniteLossError(f"{err}; last good checkpoint: {last or 'none written yet'}") from None
        start_step, meters = 0, None
        log_stats = {f"train_{k}": v for k, v in train_stats.items()}
        if loader_val is not None:
            dataset_val.set_epoch(epoch)
            val_stats = engine.evaluate(loader_val, model, device, args.amp, args.nb_classes, bad_samples)
            logging.info("epoch %d: val acc1 %.2f  UAR %.4f  WAR %.4f  loss %.4f", epoch, val_stats["acc1"],
                         val_stats["uar"], val_stats["war"], val_stats["loss"])
            if val_stats[args.val_metric] > best and args.save_ckpt:
                best = val_stats[args.val_metric]
                utils.save_model(args, "best", model_without_ddp, optimizer, scaler, model_ema)
            log_stats.update({f"val_{k}": v for k, v in val_stats.items() if k != "num_clips"})
            if log_writer is not None:
                for k in ("acc1", "acc5", "loss", "uar", "war"):
                    log_writer.add_scalar(f"perf/val_{k}", val_stats[k], epoch)
        if utils.is_main_process():
            with open(log_path, "a") as f:
                f.write(json.dumps({**log_stats, "epoch": epoch, "n_parameters": n_parameters}) + "\n")
        if args.save_ckpt:  # checkpoint-last.pth every epoch; checkpoint-<epoch>.pth as the original
            numbered = (epoch + 1) % args.save_ckpt_freq == 0 or epoch + 1 == args.epochs
            utils.save_model(args, epoch, model_without_ddp, optimizer, scaler, model_ema, numbered=numbered,
                             keep_last=args.keep_last_ckpts, extra=resume_state())
    logging.info("training time %.0f s", time.time() - start)

    # The weights tested: the best checkpoint's, or the last epoch's, trained from --finetune (whether resumed or not).
    epoch, checkpoint = args.epochs - 1, args.finetune or None
    if args.final_model == "best":
        checkpoint = str(Path(args.output_dir) / "checkpoint-best.pth")
        utils.load_model_weights(model_without_ddp, checkpoint)
        epoch = "best"
    stats = final_test(args, model, loader_test, device, epoch, header=f"{args.final_model} epoch model",
                       checkpoint=checkpoint)
    if stats:
        logging.info(format_summary(stats, args.output_dir))
    return model_without_ddp


if __name__ == "__main__":
    main(utils.parse_args(get_args_parser(), DEMO_DEFAULTS))
