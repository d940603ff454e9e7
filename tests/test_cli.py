"""cli.py: every flag of the entry scripts has help text in a group; the ignored original flags warn and are unread."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import pytest

import cli
import run_class_finetuning as rcf
import run_inference as ri
import run_mae_pretraining as rmp

REPO = Path(__file__).resolve().parent.parent
PARSERS = {"run_class_finetuning": rcf.get_args_parser, "run_mae_pretraining": rmp.get_args_parser,
           "run_inference": ri.get_args_parser}


@pytest.mark.parametrize("script", PARSERS)
def test_every_flag_has_help_text_inside_a_named_group(script):
    parser = PARSERS[script]()
    default_groups = {parser._positionals.title, parser._optionals.title}
    for group in parser._action_groups:
        for action in group._group_actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"{script}: {action.option_strings} has no help"
            assert group.title not in default_groups, f"{script}: {action.option_strings} is in no group"
    text = parser.format_help()
    assert "--batch_size" in text and (script == "run_inference" or cli.IGNORED_TITLE in text)


@pytest.mark.parametrize("script", ["run_class_finetuning", "run_mae_pretraining"])
def test_ignored_flags_warn_only_when_given_a_value_other_than_the_default(script, caplog):
    parser = PARSERS[script]()
    with caplog.at_level(logging.WARNING, logger="cli"):
        assert cli.parse_args(parser, {}, ["--color_jitter", "0.4" if script == "run_class_finetuning" else "0"]) \
            is not None
        assert cli.warn_ignored(parser, parser.parse_args(["--imagenet_default_mean_and_std"])) == []
        assert not caplog.records
        given = cli.warn_ignored(parser, parser.parse_args(["--dist_url", "tcp://h:1", "--warmup_lr", "1e-5"]))
    assert given == ["--warmup_lr", "--dist_url"] or given == ["--dist_url", "--warmup_lr"]
    assert sorted(r.getMessage().split()[0] for r in caplog.records) == ["--dist_url", "--warmup_lr"]


# Read only by the fine-tuning loader (datasets.build_dataset), which pretraining does not use.
FINE_TUNING_ONLY = {"run_class_finetuning": set(), "run_mae_pretraining": {"train_interpolation"}}


@pytest.mark.parametrize("script", ["run_class_finetuning", "run_mae_pretraining"])
def test_the_ignored_flags_are_read_nowhere(script):
    parser = PARSERS[script]()
    (ignored,) = [g for g in parser._action_groups if g.title == cli.IGNORED_TITLE]
    sources = [p for p in REPO.glob("*.py") if p.name != "cli.py"]
    text = "\n".join(p.read_text() for p in sources)
    read = [a.dest for a in ignored._group_actions
            if a.dest not in FINE_TUNING_ONLY[script] and re.search(rf"\bargs\.{a.dest}\b", text)]
    assert not read, f"{script}: flags in the ignored group are read: {read}"
    assert len(ignored._group_actions) >= 6
