"""distributed.py: the launchers' local rank and a plain run's single process."""

from __future__ import annotations

import pytest

import distributed


@pytest.mark.parametrize("script", ["run_class_finetuning", "run_mae_pretraining"])
@pytest.mark.parametrize("flag", ["--local-rank=1", "--local_rank=1", "--local-rank", "--local_rank"])
def test_both_local_rank_spellings_are_accepted_and_local_rank_in_the_environment_wins(script, flag, monkeypatch):
    import importlib

    parser = importlib.import_module(script).get_args_parser()
    args = parser.parse_args([flag] if "=" in flag else [flag, "1"])
    assert args.local_rank == 1
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert distributed.find_local_rank(args.local_rank) == 1 and not distributed.init_distributed("cpu").distributed
    monkeypatch.setenv("LOCAL_RANK", "0")  # torch.distributed.launch and torchrun set it: it is the one used
    assert distributed.find_local_rank(args.local_rank) == 0
