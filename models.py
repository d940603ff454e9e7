"""The fine-tune model as the scripts build it from their arguments, and the full-size configurations.

run_class_finetuning.py and run_inference.py build their models here; the models themselves are registered in timm by
modeling_finetune.py.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import timm
from torch import nn

import checkpoint
import modeling_finetune  # noqa: F401  (registers the models in timm)
import utils
from modeling_finetune import infer_fusion

# The released recipes' model (the launchers in scripts/ write these flags out, as the authors' command lines do):
# LGI-Former base, depth 16, 160 px, 16 frames, local-global attention over 2x5x10 regions, region-token pooling.
FULL_SIZE = dict(model="vit_base_dim512_no_depth_patch16_160", depth=16, input_size=160, num_frames=16,
                 attn_type="local_global", lg_region_size=[2, 5, 10], lg_classify_token_type="region")
# The pretraining recipe's model (scripts/voxceleb2/), whose encoder FULL_SIZE fine-tunes: run_mae_pretraining.py's
# flags.
FULL_SIZE_PRETRAIN = dict(model="pretrain_videomae_base_dim512_no_depth_patch16_160", encoder_depth=16, decoder_depth=4,
                          input_size=160, num_frames=16, attn_type="local_global", lg_region_size=[2, 5, 10])


def create_model(args: argparse.Namespace, fusion: str | None = None) -> nn.Module:
    """The fine-tune model exactly as the original script builds it, plus the fusion (default --fusion) and the input
    size."""
    fusion = fusion or args.fusion
    kwargs = dict(pretrained=False, img_size=args.input_size, num_classes=args.nb_classes,
                  all_frames=args.num_frames * args.num_segments, tubelet_size=args.tubelet_size,
                  drop_rate=args.drop, drop_path_rate=args.drop_path,
                  attn_drop_rate=args.attn_drop_rate, drop_block_rate=None, use_mean_pooling=args.use_mean_pooling,
                  init_scale=args.init_scale, lg_classify_token_type=args.lg_classify_token_type,
                  fusion=None if fusion in (None, "none") else fusion, **utils.lg_kwargs(args))
    if args.depth is not None:  # the no_depth models' depth; it overrides a fixed-depth model's
        kwargs["depth"] = args.depth
    return timm.create_model(args.model, **kwargs)


def resolve_fusion(args: argparse.Namespace, output_dir: Path) -> str:
    """--fusion; when not given, that of the weights --resume (or auto-resume) loads, read off them, since the CA
    fork's checkpoints and command lines do not name it; else none (plain MAE-DFER, the original model).

    A --fusion that contradicts those weights is an error. --finetune weights (pretraining) have no CA branch and
    say nothing: the flag stands.
    """
    if args.resume:
        candidates = [Path(args.resume)]
    else:
        candidates = checkpoint.resume_candidates(output_dir) if args.auto_resume else []
    path, found = None, None
    for candidate in candidates:  # auto-resume's rule: the newest that reads (auto_load_model warns about others)
        try:
            found = infer_fusion(checkpoint.select_state_dict(checkpoint.load_checkpoint(candidate)))
        except checkpoint.CheckpointError:
            if args.resume:
                raise
            continue
        path = candidate
        break
    if found is None:
        return args.fusion or "none"
    if args.fusion is not None and args.fusion != found:
        hint = f"give --fusion {found}" + ("" if args.demo else " or leave the flag out")  # --demo sets add
        raise checkpoint.CheckpointError(f"--fusion {args.fusion} contradicts {path}, whose weights are those of "
                                         f"--fusion {found}: {hint}")
    logging.info("--fusion %s: %s the weights of %s", found,
                 "read off" if args.fusion is None else "as given, agrees with", path)
    return found
