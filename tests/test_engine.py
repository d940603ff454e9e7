"""engine.py: a training epoch's handling of bad steps and unreadable clips, and resuming it part-way."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from support.clips import clip_dataset
from torch import nn

import engine
from annotations import Annotation
from datasets import BadSample, BadSampleLog, TooManyBadSamplesError, collate_skipping_bad


def batches(n: int = 4, size: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=gen), torch.randint(0, 3, (size,), generator=gen)) for _ in range(n)]


class NaNAt(nn.Module):
    """Cross-entropy that is NaN at the given calls."""

    def __init__(self, *calls: int):
        super().__init__()
        self.calls, self.count = set(calls), 0

    def forward(self, logits, targets):
        self.count += 1
        loss = nn.functional.cross_entropy(logits, targets)
        return loss * float("nan") if self.count in self.calls else loss


def run(loader, criterion, scaler=None, **kwargs):
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = engine.train_one_epoch(model, loader, optimizer, torch.device("cpu"), criterion=criterion,
                                   recipe=engine.StepRecipe(engine.Precision("none", scaler)), **kwargs)
    return model, stats


def test_non_finite_loss_raises_without_loss_scaling():
    with pytest.raises(engine.NonFiniteLossError, match=r"loss is nan at epoch 0, step 2 \(global step 12\)"):
        run(batches(), NaNAt(3), start=engine.EpochStart(global_step_offset=10))


def test_non_finite_loss_under_loss_scaling_skips_and_counts_the_step():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    model, stats = run(batches(), NaNAt(2), scaler=scaler)
    assert stats["skipped_steps"] == 1 and scaler.get_scale() == 512.0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    reference, _ = run([b for i, b in enumerate(batches()) if i != 1], NaNAt())  # the same without that batch
    assert all(torch.allclose(p, q) for p, q in zip(model.parameters(), reference.parameters()))


def test_an_epoch_resumed_part_way_equals_the_whole_epoch():
    seen = []
    whole, whole_stats = run(batches(), NaNAt(), on_step=lambda step, meters: seen.append(
        (step, engine.meters_state(meters))))
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine.train_one_epoch(model, batches()[:2], optimizer, torch.device("cpu"), criterion=NaNAt())
    stats = engine.train_one_epoch(model, batches()[2:], optimizer, torch.device("cpu"), criterion=NaNAt(),
                                   start=engine.EpochStart(step=2, meters=engine.new_meters(seen[1][1])))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), whole.parameters()))
    assert stats == whole_stats


def test_unreadable_clips_are_skipped_counted_and_named_then_fail_past_the_limit(tmp_path, caplog):
    import cv2

    good = tmp_path / "good"
    good.mkdir()
    for t in range(4):
        cv2.imwrite(str(good / f"{t:05d}.jpg"), np.full((16, 16, 3), 60 * t, np.uint8))
    entries = [Annotation(str(good), str(good), 1, "train.csv:1"),
               Annotation("gone", str(tmp_path / "gone"), 2, "train.csv:2"),
               Annotation(str(good), str(good), 0, "train.csv:3")]
    dataset = clip_dataset(entries, "train", num_frames=4, sampling_rate=1, input_size=16, short_side_size=16,
                          seed=0, skip_bad=True)
    assert isinstance(dataset[1], BadSample) and dataset.collate is collate_skipping_bad
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=dataset.collate)
    clips, labels, bad = next(iter(loader))
    assert clips.shape[0] == 2 and labels.tolist() == [1, 0]  # skipped, not replaced by another clip
    assert [b.source for b in bad] == ["train.csv:2"]

    log = BadSampleLog(limit=1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 16 * 16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):  # the same clip twice counts once
            engine.train_one_epoch(model, loader, optimizer, torch.device("cpu"),
                                   criterion=nn.CrossEntropyLoss(), bad_samples=log)
    assert list(log.seen) == ["train.csv:2"] and caplog.text.count("skipped unreadable sample 1") == 1
    assert "gone: no such file or folder" in caplog.text
    with pytest.raises(TooManyBadSamplesError, match=r"1 unreadable samples, more than --max_bad_samples 0:\n.*gone"):
        engine.train_one_epoch(model, loader, optimizer, torch.device("cpu"), criterion=nn.CrossEntropyLoss(),
                               bad_samples=BadSampleLog(limit=0))


class CountingRows(nn.Module):
    """A linear classifier of the whole clip that counts the clips it is given."""

    def __init__(self, size: int):
        super().__init__()
        self.head, self.rows = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * size * size, 5)), 0

    def forward(self, x):
        self.rows += len(x)
        return self.head(x)


def test_identical_test_views_are_computed_once_and_give_every_view_its_probabilities(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    entries = []
    for c, n in enumerate((12, 9, 20)):  # clips of several lengths: the temporal views differ
        folder = tmp_path / f"c{c}"
        folder.mkdir()
        for t in range(n):
            cv2.imwrite(str(folder / f"{t:05d}.jpg"), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
        entries.append(Annotation(str(folder), str(folder), c, f"test.csv:{c + 1}"))
    dataset = clip_dataset(entries, "test", num_frames=4, sampling_rate=2, input_size=16, short_side_size=16,
                          test_num_segment=2, test_num_crop=3)
    torch.manual_seed(0)
    model = CountingRows(16)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    records = engine.predict_views(loader, model, torch.device("cpu"))
    assert model.rows == 3 * 2  # one forward per temporal view, not per (temporal, spatial) view
    assert sorted((r[0], r[2], r[3]) for r in records) == sorted(
        (e.clip_id, chunk, crop) for e in entries for chunk in range(2) for crop in range(3))
    by_view = {}
    for clip_id, _, chunk, _, probs in records:
        by_view.setdefault((clip_id, chunk), []).append(probs)
    for (clip_id, chunk), views in by_view.items():
        assert all(np.array_equal(views[0], p) for p in views)  # the spatial views: the same bits
        # ... which are what the original computes for each view on its own: the view's clip, the whole frame
        view = next(dataset[i] for i in range(len(dataset)) if dataset[i][2] == clip_id and dataset[i][3] == chunk)
        with torch.no_grad():
            alone = torch.softmax(model.head(view[0][None]).double(), dim=1)[0].numpy()
        np.testing.assert_allclose(views[0], alone, rtol=0, atol=1e-6)  # batch 1 vs 4: float32 summation order


def test_a_padded_batch_gives_the_rows_of_the_unpadded_one():
    torch.manual_seed(0)
    model = CountingRows(8).eval()
    clips = torch.randn(3, 3, 4, 8, 8)
    with torch.no_grad():
        padded = engine.padded_forward(model, clips, pad_to=5)
        assert model.rows == 5 and padded.shape == (3, 5)
        torch.testing.assert_close(padded, model(clips), rtol=0, atol=1e-6)
        assert engine.padded_forward(model, clips, pad_to=None).shape == (3, 5) and model.rows == 5 + 3 + 3
        assert engine.padded_forward(model, clips, pad_to=3).shape == (3, 5) and model.rows == 5 + 3 + 3 + 3


def test_validation_metrics_do_not_change_with_padding():
    torch.manual_seed(0)
    model = CountingRows(8)
    clips, labels = torch.randn(7, 3, 4, 8, 8), torch.randint(0, 5, (7,))
    loader = [(clips[i:i + 3], labels[i:i + 3], [f"c{j}" for j in range(i, min(i + 3, 7))]) for i in range(0, 7, 3)]
    plain = engine.evaluate(loader, model, torch.device("cpu"), num_classes=5)
    rows = model.rows
    padded = engine.evaluate(loader, model, torch.device("cpu"), num_classes=5, pad_to=3)
    assert model.rows - rows == 9 and rows == 7  # the last batch of 1 ran as 3
    assert padded["num_clips"] == plain["num_clips"] == 7
    assert padded == pytest.approx(plain, rel=1e-6)


@pytest.mark.slow
def test_compiled_evaluation_runs_full_and_last_batches_on_one_graph():
    import timm
    from torch._dynamo.utils import counters

    import modeling_finetune  # noqa: F401  (registers the models)
    import training

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_dim128_no_depth_patch16_64", img_size=32, depth=1, num_classes=5,
                              all_frames=16, lg_region_size=[2, 1, 2], lg_classify_token_type="region",
                              fusion="add").eval()
    compiled = training.evaluation_model(model, compile=True)
    with torch.no_grad():
        for size in (6, 6, 2, 5):  # full batches, then last batches of other sizes
            clips = torch.randn(size, 3, 16, 32, 32)
            out = engine.padded_forward(compiled, clips, pad_to=6)
            torch.testing.assert_close(out, model(clips), rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1


def test_the_ema_follows_applied_steps_only_decided_on_the_device():
    from timm.utils import ModelEmaV3

    torch.manual_seed(0)
    model, twin = nn.Linear(6, 3), nn.Linear(6, 3)
    ema, reference = ModelEmaV3(model, decay=0.9), ModelEmaV3(model, decay=0.9)
    before = [v.clone() for v in ema.module.state_dict().values()]
    twin.load_state_dict({k: v + 1 for k, v in model.state_dict().items()})  # the weights after a step
    engine.update_ema(ema, twin, skipped=torch.tensor(True))
    assert all(torch.equal(a, b) for a, b in zip(ema.module.state_dict().values(), before))
    engine.update_ema(ema, twin, skipped=torch.tensor(False))
    reference.update(twin)
    for value, expected, old in zip(ema.module.state_dict().values(), reference.module.state_dict().values(), before):
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
        assert not torch.equal(value, old)
