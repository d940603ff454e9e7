"""Fine-tune and evaluate MAE-DFER / MAE-DFER-CA on a DFER dataset (FERV39k, DFEW, MAFW, ...) or the built-in demo.

Takes the original script's flags and defaults, so the authors' command lines run unchanged (one process, or
torchrun for several), plus --fusion, --amp, --compile, --data_root and --demo. `python run_class_finetuning.py
--demo` generates the synthetic demo dataset and trains a small LGI-Former with the CA branch on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tensorboardX import SummaryWriter
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn

import checkpoint
import cli
import datasets
import distributed
import engine
import preemption
import schedules
import training
from annotations import DATASETS
from augment_device import DeviceAugment
from datasets import build_dataset
from metrics import format_summary, write_test_report
from models import create_model, resolve_fusion

# The demo's configuration: defaults that --demo puts in place of the original ones (explicit flags still win).
# It trains from scratch, so every layer gets the full learning rate (layer_decay 1). Its validation list is its
# test list, so it skips validating after every epoch (a fifth of an epoch's time; the test runs at the end).
DEMO_DEFAULTS = dict(
    data_set="DEMO", nb_classes=len(DATASETS["DEMO"].classes), data_path="saved/data/demo", data_root="saved/data/demo",
    model="vit_tiny_dim128_no_depth_patch16_64", depth=4, input_size=64, short_side_size=64, num_frames=16,
    sampling_rate=1, lg_region_size=[2, 2, 4], lg_classify_token_type="region", fusion="add", batch_size=16,
    epochs=12, warmup_epochs=2, disable_eval_during_finetuning=True, lr=1e-2, layer_decay=1.0, num_sample=1,
    num_workers=1, test_num_segment=2, test_num_crop=2, mixup=0.0, cutmix=0.0, reprob=0.0,
    aa="rand-m3-n2-mstd0.5-inc1", drop_path=0.0, save_ckpt_freq=1000, output_dir="saved/model/finetuning/demo",
    dist_eval=True)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("MAE-DFER fine-tuning and evaluation", add_help=True)
    g = cli.make_groups(p)
    add = g.optimizer.add_argument
    add("--update_freq", default=1, type=int, help="gradient accumulation: steps per optimizer update")
    cli.add_optimizer_arguments(g.optimizer, epochs=30, lr=1e-3, min_lr=1e-6, warmup_epochs=5)
    add("--layer_decay", type=float, default=0.75, help="layer-wise learning-rate decay (1: none)")

    add = g.model.add_argument
    add("--model", default="vit_base_patch16_224", type=str,
        help="model name in timm's registry, e.g. vit_base_dim512_no_depth_patch16_160 (the released one)")
    add("--tubelet_size", type=int, default=2, help="frames per patch")
    add("--input_size", default=224, type=int, help="frame side in pixels")
    add("--drop", type=float, default=0.0, help="dropout rate")
    add("--attn_drop_rate", type=float, default=0.0, help="attention dropout rate")
    add("--drop_path", type=float, default=0.1, help="stochastic depth rate")
    add("--model_ema", action="store_true", default=False, help="keep an exponential moving average of the weights")
    add("--model_ema_decay", type=float, default=0.9999, help="decay of --model_ema")
    add("--model_ema_force_cpu", action="store_true", default=False, help="keep the --model_ema copy on the CPU")
    add("--attn_type", default="local_global", choices=["joint", "local_global"],
        help="LGI-Former blocks (local_global) or plain ViT blocks (joint)")
    cli.add_lg_arguments(g.model)
    add("--lg_classify_token_type", type=str, default="org", choices=["org", "region", "all"],
        help="tokens pooled for the head: the patch tokens (org), the region tokens (region) or both (all)")
    add("--depth", default=None, type=int, help="encoder depth of the no_depth models (the released ones: 16)")
    g.ours.add_argument("--fusion", default=None, choices=["none", "add", "cat", "pos"],
                        help="CA motion branch fusion. Not given: that of the weights resumed or evaluated, else none")
    add("--finetune", default="", help="initialise from this (pretraining) checkpoint")
    add("--model_key", default="model|module", type=str,
        help="key(s) of the checkpoint's state dict, |-separated, first found wins")
    add("--model_prefix", default="", type=str, help="keep only the keys with this prefix, with the prefix removed")
    add("--init_scale", default=0.001, type=float, help="scale of the head's initial weights")
    add("--use_mean_pooling", action="store_true", help="average the selected tokens (default)")
    p.set_defaults(use_mean_pooling=True)
    add("--use_cls", action="store_false", dest="use_mean_pooling", help="take the first selected token instead")

    add = g.augmentation.add_argument
    add("--num_sample", type=int, default=2, help="augmented copies of each training clip per step (repeated aug.)")
    add("--aa", type=str, default="rand-m7-n4-mstd0.5-inc1", help="RandAugment policy, timm's syntax")
    cli.add_augment_arguments(g.ours)
    add("--smoothing", type=float, default=0.1, help="label smoothing")
    add("--train_interpolation", type=str, default="bicubic", help="interpolation of RandAugment's geometric ops")
    add("--short_side_size", type=int, default=224, help="frames are resized to this side before cropping")
    add("--test_num_segment", type=int, default=5, help="temporal views of each test clip")
    add("--test_num_crop", type=int, default=3, help="spatial views of each test clip")
    add("--reprob", type=float, default=0.25, help="random erasing probability")
    add("--remode", type=str, default="pixel", help="random erasing fill: const, rand or pixel")
    add("--recount", type=int, default=1, help="random erasing count")
    add("--mixup", type=float, default=0.8, help="mixup alpha (0: off)")
    add("--cutmix", type=float, default=1.0, help="cutmix alpha (0: off)")
    add("--cutmix_minmax", type=float, nargs="+", default=None, metavar="RATIO",
        help="cutmix min/max box ratio; overrides --cutmix")
    add("--mixup_prob", type=float, default=1.0, help="probability of mixup or cutmix per batch")
    add("--mixup_switch_prob", type=float, default=0.5, help="probability of cutmix instead of mixup")
    add("--mixup_mode", type=str, default="batch", help="how mixup parameters are drawn: batch, pair or elem")

    add = g.data.add_argument
    add("--data_path", default="/path/to/list_kinetics-400", type=str,
        help="folder with train.csv and test.csv (DFEW: also val.csv)")
    g.ours.add_argument("--data_root", default=None, type=str, help="resolve relative CSV paths against this folder")
    add("--nb_classes", default=400, type=int, help="number of classes (7 for DFEW and FERV39k, 11 for MAFW)")
    add("--num_segments", type=int, default=1, help="segments per clip; must be 1")
    add("--num_frames", type=int, default=16, help="frames per clip")
    add("--sampling_rate", type=int, default=4, help="take every N-th frame")
    add("--data_set", default="Kinetics-400", choices=list(DATASETS), type=str, help="names the class list")
    add("--output_dir", default="", help="checkpoints, logs and test reports go here")
    add("--log_dir", default=None, help="TensorBoard folder (default: --output_dir)")

    add = g.run.add_argument
    cli.add_run_arguments(g)
    add("--save_ckpt_freq", default=100, type=int,
        help="write checkpoint-<epoch>.pth every N epochs and after the last")
    add("--save_ckpt", action="store_true", help="write checkpoints (default)")
    add("--no_save_ckpt", action="store_false", dest="save_ckpt", help="write no checkpoint")
    p.set_defaults(save_ckpt=True)
    add("--eval", action="store_true", help="only test the resumed (or --finetune) weights")
    add("--disable_eval_during_finetuning", action=argparse.BooleanOptionalAction, default=False,
        help="no validation after each epoch (the demo's default: --no-disable_eval_during_finetuning validates)")
    add("--dist_eval", action="store_true", default=False, help="split the validation set over the processes")
    add("--val_metric", type=str, default="acc1",
        choices=["acc1", "acc5", "war", "uar", "weighted_f1", "micro_f1", "macro_f1"],
        help="validation metric that picks checkpoint-best.pth")
    ours = g.ours.add_argument
    ours("--sync_bn", action="store_true", help="SyncBatchNorm in the CA branch: BN statistics over the global batch "
         "(multi-GPU)")
    ours("--final_model", default="last", choices=["last", "best"],
         help="model for the final test: the last epoch (the original protocol) or checkpoint-best")
    ours("--max_bad_samples", default=10, type=int,
         help="skip (and log) up to N unreadable train / validation clips per process, then stop")
    ours("--demo", action="store_true", help="train and test on the built-in synthetic dataset (CPU friendly)")

    ignored = g.ignored.add_argument
    cli.add_common_ignored_arguments(g.ignored, color_jitter=0.4)
    ignored("--crop_pct", type=float, default=None, help="the test crop is set by --short_side_size")
    ignored("--resplit", action="store_true", default=False, help="random erasing never splits the batch")
    ignored("--eval_data_path", default=None, type=str, help="lists are read from --data_path")
    ignored("--enable_deepspeed", action="store_true", default=False, help="DeepSpeed is not used; torch DDP is")
    ignored("--save_feature", action="store_true", default=False, help="no features are saved")
    return p


def final_test(args: argparse.Namespace, run: training.Run, model: nn.Module, data_loader, precision, *,
               epoch: int | str | None, header: str | None, checkpoint: str | None) -> None:
    """Multi-view test: every view's softmax, merged per clip on rank 0, with all reports written and summarised."""
    records = engine.predict_views(data_loader, model, run.device, precision,
                                   pad_to=eval_batch_size(args, data_loader))
    gathered = [r for rank_records in distributed.all_gather_objects(records) for r in rank_records]
    if run.is_main:
        clips = data_loader.dataset.annotations
        order = datasets.original_test_order(len(clips), args.test_num_segment * args.test_num_crop,
                                             run.process.world_size)
        stats = write_test_report(run.output_dir, gathered, DATASETS[args.data_set].classes, header=header,
                                  checkpoint=checkpoint, epoch=epoch,
                                  order=list(dict.fromkeys(clips[i].clip_id for i in order)))
        logging.info(format_summary(stats, run.output_dir))


def eval_batch_size(args: argparse.Namespace, loader) -> int | None:
    """With --compile, the size every batch of an evaluation loader is padded to: its own batch size (one static
    graph for the validation batches, one for the test's)."""
    return loader.batch_size if args.compile else None


def data_lists(args: argparse.Namespace) -> list[Path]:
    """The lists this run reads: test.csv, and for training train.csv and the validation list."""
    names = ["test.csv"]
    if not args.eval:
        names += ["train.csv"] + ([] if args.disable_eval_during_finetuning else [DATASETS[args.data_set].val_file])
    return [Path(args.data_path) / name for name in dict.fromkeys(names)]


def make_demo_data(args: argparse.Namespace) -> None:
    if not (Path(args.data_path) / "train.csv").exists():
        from demo_data import make_demo_dataset

        make_demo_dataset(args.data_path)


def create_criterion(args: argparse.Namespace) -> tuple[Mixup | None, nn.Module]:
    """Mixup / cutmix (which pair a batch's clips) with soft-target cross-entropy, else (smoothed) cross-entropy."""
    if not (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        return None, LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing > 0 else nn.CrossEntropyLoss()
    if args.batch_size % 2:
        raise ValueError(f"--batch_size {args.batch_size}: mixup / cutmix pair a batch's clips, it must be even")
    mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                  prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                  label_smoothing=args.smoothing, num_classes=args.nb_classes)
    return mixup, SoftTargetCrossEntropy()


@dataclass
class TrainingData:
    """The training set and its loader, the batched device augmentation (augment_on "device"), and the validation
    set and loader (None with --disable_eval_during_finetuning)."""

    dataset: datasets.ClipDataset
    loader: datasets.Loader
    augment: DeviceAugment | None
    val_dataset: datasets.ClipDataset | None
    val_loader: datasets.Loader | None


@dataclass
class Fit:
    """What the epoch loop trains with: the schedule, loss, optimizer, EMA, the resumed state and the checkpointer."""

    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    mixup_fn: Mixup | None
    schedule: schedules.Schedule
    model_ema: ModelEmaV3 | None
    state: training.ResumeState
    saver: training.Checkpointer
    log_writer: SummaryWriter | None


def build_model(args: argparse.Namespace, run: training.Run) -> tuple[nn.Module, str]:
    """The fine-tune model with its fusion, initialised from --finetune when given, on the run's device."""
    fusion = resolve_fusion(args, run.output_dir)
    model = create_model(args, fusion)
    if args.finetune:
        checkpoint.load_pretrained(model, args.finetune, args.model_key, args.model_prefix)
    model.to(run.device)
    logging.info("model %s (fusion %s): %d trainable parameters", args.model, fusion, trainable_parameters(model))
    return model, fusion


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_training_data(args: argparse.Namespace, device: torch.device) -> TrainingData:
    """The training loader (shuffled, the last partial batch dropped) and, unless disabled, the validation loader."""
    dataset = build_dataset(is_train=True, test_mode=False, args=args)[0]
    loader = datasets.build_loader(dataset, args, args.batch_size, train=True, device=device)
    augment = dataset.device_augment() if dataset.augment_on == "device" else None
    val_dataset = val_loader = None
    if not args.disable_eval_during_finetuning:
        val_dataset = build_dataset(is_train=False, test_mode=False, args=args)[0]
        val_loader = datasets.build_loader(val_dataset, args, int(1.5 * args.batch_size),
                                           sequential=not args.dist_eval, device=device)
    return TrainingData(dataset, loader, augment, val_dataset, val_loader)


def prepare_fit(args: argparse.Namespace, run: training.Run, model: nn.Module, data: TrainingData, fusion: str,
                precision: engine.Precision) -> Fit:
    """Schedule, loss, EMA and optimizer for the global batch; the state resumed from output_dir; the checkpointer."""
    global_batch = args.batch_size * args.update_freq * run.process.world_size
    steps = training.steps_per_epoch(len(data.dataset), global_batch, "the training set")
    schedule = schedules.build_schedule(args, global_batch, steps)
    mixup_fn, criterion = create_criterion(args)
    model_ema = ModelEmaV3(model, decay=args.model_ema_decay,
                           device="cpu" if args.model_ema_force_cpu else None) if args.model_ema else None
    optimizer = training.create_optimizer(args, model, schedule.peak_lr, layer_decay=args.layer_decay,
                                           loss_scaling=precision.scaler is not None)
    state = training.resume(args, run, model, optimizer=optimizer, precision=precision, model_ema=model_ema,
                            max_bad_samples=args.max_bad_samples,
                            geometry=dict(batch_size=args.batch_size, update_freq=args.update_freq,
                                          processes=run.process.world_size))
    saved_args = training.checkpoint_args(args, run, global_batch, fusion=fusion)
    saver = training.Checkpointer(run, state, model, optimizer, saved_args, precision, epochs=args.epochs,
                                  save_ckpt_freq=args.save_ckpt_freq, save_every_steps=args.save_every_steps,
                                  keep_last=args.keep_last_ckpts, model_ema=model_ema, enabled=args.save_ckpt)
    train_model = training.distributed_model(model, run, compile=args.compile, sync_bn=args.sync_bn)
    log_writer = training.log_writer(args, run)
    logging.info("global batch %d, peak lr %.3g, %d steps per epoch", global_batch, schedule.peak_lr, steps)
    if state.start_epoch >= args.epochs:
        logging.warning("%s holds a finished run (%s): training skipped, the final test runs again",
                        run.output_dir, state.checkpoint)
    return Fit(train_model, optimizer, criterion, mixup_fn, schedule, model_ema, state, saver, log_writer)


def train_epochs(args: argparse.Namespace, run: training.Run, fit: Fit, data: TrainingData, eval_model: nn.Module,
                 precision: engine.Precision, n_parameters: int) -> None:
    """The epochs from the resumed one on: train, validate (saving checkpoint-best), log, checkpoint."""
    device, state, steps = run.device, fit.state, fit.schedule.steps_per_epoch
    recipe = engine.StepRecipe(precision, fit.schedule, update_freq=args.update_freq, max_norm=args.clip_grad,
                               model_ema=fit.model_ema, mixup_fn=fit.mixup_fn, augment=data.augment,
                               log_every=args.log_every)
    start = time.time()
    for epoch in range(state.start_epoch, args.epochs):
        epoch_start = state.epoch_start(epoch, steps)
        # This rank's clips of the epoch already seen (steps x accumulation x batch) are skipped.
        data.loader.sampler.set_epoch(epoch, start=epoch_start.step * args.update_freq * args.batch_size)
        data.dataset.set_epoch(epoch)
        with training.naming_last_checkpoint(run.output_dir), preemption.checkpoint_on_stop(fit.saver, epoch):
            train_stats = engine.train_one_epoch(
                fit.train_model, data.loader, fit.optimizer, device, criterion=fit.criterion, recipe=recipe,
                start=epoch_start, log_writer=fit.log_writer, on_step=fit.saver.mid_epoch(epoch, steps),
                bad_samples=state.bad_samples)
        log_stats = {f"train_{k}": v for k, v in train_stats.items()}
        if data.val_loader is not None:
            log_stats.update(validate(args, fit, data, eval_model, precision, epoch, device))
        training.write_log(run, {**log_stats, "epoch": epoch, "n_parameters": n_parameters})
        fit.saver.end_of_epoch(epoch)
    logging.info("training time %.0f s", time.time() - start)


def validate(args: argparse.Namespace, fit: Fit, data: TrainingData, eval_model: nn.Module,
             precision: engine.Precision, epoch: int, device: torch.device) -> dict:
    """One epoch's validation: logged, written to TensorBoard, checkpoint-best saved on a new best --val_metric."""
    data.val_dataset.set_epoch(epoch)
    val_stats = engine.evaluate(data.val_loader, eval_model, device, num_classes=args.nb_classes,
                                precision=precision, bad_samples=fit.state.bad_samples,
                                pad_to=eval_batch_size(args, data.val_loader))
    logging.info("epoch %d: val acc1 %.2f  UAR %.4f  WAR %.4f  loss %.4f", epoch, val_stats["acc1"],
                 val_stats["uar"], val_stats["war"], val_stats["loss"])
    if val_stats[args.val_metric] > fit.state.best_metric and args.save_ckpt:
        fit.state.best_metric = val_stats[args.val_metric]
        fit.saver.save("best")
    if fit.log_writer is not None:
        for k in ("acc1", "acc5", "loss", "uar", "war"):
            fit.log_writer.add_scalar(f"perf/val_{k}", val_stats[k], epoch)
    return {f"val_{k}": v for k, v in val_stats.items() if k != "num_clips"}


def main(args: argparse.Namespace) -> nn.Module:
    """Fine-tune (resuming what output_dir holds) and test, or only test with --eval; returns the model."""
    run = training.prepare_run(args, lists=data_lists(args), nb_classes=args.nb_classes, data_set=args.data_set,
                               evaluating=args.eval, make_demo_data=lambda: make_demo_data(args))
    precision = run.precision()
    dataset_test = build_dataset(is_train=False, test_mode=True, args=args)[0]
    loader_test = datasets.build_loader(dataset_test, args, args.batch_size, device=run.device)
    model, fusion = build_model(args, run)
    n_parameters = trainable_parameters(model)
    eval_model = training.evaluation_model(model, compile=args.compile)
    if args.eval:
        state = training.resume(args, run, model, evaluating=True)
        if not state.checkpoint and not args.finetune:
            logging.warning("--eval without a checkpoint: testing an untrained model")
        final_test(args, run, eval_model, loader_test, precision, epoch=None, header=None,
                   checkpoint=state.checkpoint or args.finetune or None)
        return model

    data = build_training_data(args, run.device)
    fit = prepare_fit(args, run, model, data, fusion, precision)
    train_epochs(args, run, fit, data, eval_model, precision, n_parameters)

    # The weights tested: the best checkpoint's, or the last epoch's, trained from --finetune (whether resumed or not).
    epoch, tested = args.epochs - 1, args.finetune or None
    if args.final_model == "best":
        tested = str(run.output_dir / "checkpoint-best.pth")
        checkpoint.load_model_weights(model, tested)
        epoch = "best"
    final_test(args, run, eval_model, loader_test, precision, epoch=epoch, header=f"{args.final_model} epoch model",
               checkpoint=tested)
    return model


if __name__ == "__main__":
    with training.process_group_closed(), preemption.stop_on_signals():
        main(cli.parse_args(get_args_parser(), DEMO_DEFAULTS))
