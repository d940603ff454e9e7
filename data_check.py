"""Check annotation lists before training: every problem that would break or bias a run, with its file and line.

Two depths share one code path. The fast check (`check_lists`, run at the start of fine-tuning and pretraining)
parses every line, checks labels, duplicates, train/test overlap, fold partitions and that every path exists, and
given a data_set opens a few clips per list for the layout warnings (LAYOUTS: not the data the released
checkpoints were trained on): it takes seconds. The full check (`check_annotations(..., deep=True)`, `python -m
preprocess.check`) also opens every entry with the loader's own reader (`video_io.FrameSource`), counts frames, checks
their order and, with `decode`, decodes every image or video frame.
"""

from __future__ import annotations

import os
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from annotations import DATASETS, Annotation, parse_line
from datasets import train_indices
from video_io import FrameSource

ERROR, WARNING = "error", "warning"
# Folders of cross-validation folds, as the originals name them (splitNN) and as DFEW/MAFW's official lists do.
_FOLD_DIR = re.compile(r"^(split|set_|fold)\d+$")


class DataCheckError(ValueError):
    """Raised by check_lists: its message lists every error found."""


@dataclass(frozen=True)
class Problem:
    severity: str  # ERROR (training would fail, or silently use the wrong data) or WARNING (works, but biased)
    kind: str  # short tag: missing, empty, short, order, decode, video, label, malformed, duplicate, overlap, ...
    where: str  # "<csv>:<line>" or "<csv>"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.severity}: {self.message}"


@dataclass
class ClipInfo:
    """What the full check learned about one path: frame count, image sizes and its problems."""

    frames: int | None = None
    sizes: tuple[tuple[int, int], ...] = ()
    issues: list[tuple[str, str, str]] = field(default_factory=list)  # (severity, kind, message)


@dataclass
class FileSummary:
    entries: int = 0
    labels: Counter = field(default_factory=Counter)
    frames: list[int] = field(default_factory=list)
    sizes: Counter = field(default_factory=Counter)


@dataclass
class Report:
    class_names: Sequence[str] | None
    files: dict[str, FileSummary]
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def to_json(self) -> dict:
        """A JSON-serialisable form: per-file summaries, every problem, and the counts."""
        files = {}
        for csv, s in self.files.items():
            files[csv] = {"entries": s.entries, "classes": self._histogram(s),
                          "frames": _frame_stats(s.frames), "sizes": {f"{w}x{h}": n for (w, h), n in
                                                                     s.sizes.most_common()}}
        return {"files": files, "problems": [vars(p) for p in self.problems], "errors": len(self.errors),
                "warnings": len(self.problems) - len(self.errors)}

    def format(self) -> str:
        """The readable report: every problem (errors first), their counts, then one table row per list."""
        lines = [str(p) for p in sorted(self.problems, key=_order)]
        if self.problems:
            counts = Counter((p.severity, p.kind) for p in self.problems)
            lines.append("problems: " + ", ".join(f"{n} {kind} ({sev})" for (sev, kind), n in sorted(counts.items())))
        lines += ["", *_table(self._rows())]
        errors, warnings = len(self.errors), len(self.problems) - len(self.errors)
        lines.append(f"{'FAILED' if errors else 'OK'}: {errors} errors, {warnings} warnings")
        return "\n".join(lines)

    def _rows(self) -> list[list[str]]:
        """Header and one row per list: entries, clips per class, frames per clip, most common image size."""
        base = os.path.commonpath([os.path.dirname(os.path.abspath(csv)) for csv in self.files]) if self.files else ""
        histograms = {csv: self._histogram(s) for csv, s in self.files.items()}
        classes = list(dict.fromkeys(name for h in histograms.values() for name in h))
        rows = [["list", "entries", *classes, "frames min/median/max", "image size"]]
        for csv, s in self.files.items():
            stats = _frame_stats(s.frames)
            frames = f"{stats['min']}/{stats['median']:g}/{stats['max']}" if stats else "-"
            size = "-"
            if s.sizes:
                (w, h), _ = s.sizes.most_common(1)[0]
                size = f"{w}x{h}" + (f" (+{len(s.sizes) - 1} other)" if len(s.sizes) > 1 else "")
            rows.append([os.path.relpath(os.path.abspath(csv), base), str(s.entries),
                         *(str(histograms[csv].get(c, 0)) for c in classes), frames, size])
        return rows

    def _histogram(self, s: FileSummary) -> dict[str, int]:
        """Class name (or label) -> count, every class of the dataset included, in label order."""
        labels = sorted(s.labels)
        if self.class_names is not None:
            labels = sorted(set(range(len(self.class_names))) | set(labels))
        return {self._name(label): s.labels[label] for label in labels}

    def _name(self, label: int) -> str:
        names = self.class_names
        return names[label] if names is not None and 0 <= label < len(names) else str(label)


def _order(problem: Problem) -> tuple:
    """Errors first, then by file and line number."""
    file, _, line = problem.where.rpartition(":")
    return (problem.severity != ERROR, file, int(line)) if line.isdigit() else \
        (problem.severity != ERROR, problem.where, 0)


def _table(rows: list[list[str]]) -> list[str]:
    """Rows as aligned text columns (the first left-aligned, the others right-aligned)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
            for row in rows]


def _frame_stats(frames: list[int]) -> dict:
    return {"min": min(frames), "median": statistics.median(frames), "max": max(frames)} if frames else {}


# ---------------------------------------------------------------------------------------------------------------
# One entry

def inspect_clip(entry: Annotation, frame_ext: str, num_frames: int, sampling_rate: int, decode: bool) -> ClipInfo:
    """Open one entry as the loader does and report what would break or bias training (module level: picklable)."""
    info = ClipInfo()
    try:
        clip = FrameSource(entry, frame_ext)
    except FileNotFoundError:
        info.issues.append((ERROR, "missing", f"{entry.path}: no such file or folder"))
        return info
    except (OSError, ValueError) as err:
        message = str(err).removeprefix(f"{entry.source}: ")
        if os.path.isdir(entry.path):
            others = Counter(os.path.splitext(n)[1] for n in os.listdir(entry.path) if not n.startswith("."))
            if others:
                message += " (it holds " + ", ".join(f"{n} {ext or 'other'}" for ext, n in others.items()) + " files)"
            info.issues.append((ERROR, "empty", message))
        else:
            info.issues.append((ERROR, "video", message))
        return info
    info.frames = clip.count
    if clip.video is not None:
        if decode:
            info.sizes, bad = _decode_video(clip)
            if bad:
                info.issues.append((ERROR, "decode", bad))
    elif decode:
        sizes = set()
        for file in clip.files:
            image = cv2.imread(file, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            if image is None:
                info.issues.append((ERROR, "decode", f"{file}: the image does not decode"))
            else:
                sizes.add((image.shape[1], image.shape[0]))
        info.sizes = tuple(sizes)
    else:  # the first frame's header only: cheap, and frames of one clip share a size in the distributed sets
        try:
            with Image.open(clip.files[0]) as image:
                info.sizes = (image.size,)
        except Exception as err:
            info.issues.append((ERROR, "decode", f"{clip.files[0]}: not an image: {err}"))
    if clip.video is None and len(clip.files) > 1:
        _check_order(clip.files, info)
    _check_length(clip.count, num_frames, sampling_rate, info)
    return info


def _decode_video(clip: FrameSource) -> tuple[tuple[tuple[int, int], ...], str | None]:
    """Decode every frame of a video (in batches); (frame sizes, the first failure or None)."""
    sizes = set()
    for start in range(0, clip.count, 64):
        try:
            batch = clip.video_frames(np.arange(start, min(start + 64, clip.count)))
        except OSError as err:
            return tuple(sizes), f"{clip.files[0]}: frames from {start} do not decode: {err.__cause__ or err}"
        sizes.add((batch.shape[2], batch.shape[1]))
    return tuple(sizes), None


def _check_order(files: list[str], info: ClipInfo) -> None:
    """Frames are read in sorted-name order: numbered names that are not zero-padded come out of temporal order."""
    numbers = [re.findall(r"\d+", os.path.basename(f)) for f in files]
    if all(numbers):
        keys = [int(n[-1]) for n in numbers]
        first = next((i for i, (a, b) in enumerate(pairwise(keys)) if a > b), None)
        if first is not None:
            names = ", ".join(os.path.basename(f) for f in files[max(first - 1, 0):first + 2])
            info.issues.append((ERROR, "order", f"{os.path.dirname(files[0])}: frame names sort out of numeric "
                                                f"order (… {names} …): the loader would read the frames shuffled; "
                                                f"zero-pad the numbers"))


def _check_length(count: int, num_frames: int, sampling_rate: int, info: ClipInfo) -> None:
    """A clip shorter than one sampling window is still used: say how the loader stretches it."""
    window = num_frames * sampling_rate
    if count < window:
        distinct = len(np.unique(train_indices(count, num_frames, sampling_rate)))
        info.issues.append((WARNING, "short", f"{count} frames, fewer than one clip's {window} ({num_frames} x "
                                              f"{sampling_rate}): the loader spreads them and repeats the last "
                                              f"frame ({distinct} distinct of {num_frames} in training)"))


def _inspect_star(args: tuple) -> ClipInfo:
    return inspect_clip(*args)


# ---------------------------------------------------------------------------------------------------------------
# The data the released checkpoints were trained on (docs/DATASETS.md). Lists of other variants still train and
# test, but do not give the papers' numbers: the authors' answer to most "I cannot reproduce" reports. Warnings.

@dataclass(frozen=True)
class Layout:
    trained_on: str  # what the released checkpoints were trained on
    frame_size: tuple[int, int] | None = None  # (width, height) of every distributed frame, where it is known


LAYOUTS = {
    "DFEW": Layout("DFEW's face frames as distributed: Clip/jpg_256 (the official jpg_224 folder, renamed), "
                   "256x256, every frame of each clip", (256, 256)),
    "FERV39k": Layout("FERV39k's face-cropped clips as distributed (2_ClipsforFaceCrop)"),
    "MAFW": Layout("MAFW's face frames as distributed (data/frames, .png), not frames extracted from the videos"),
}
TIME_NORMALISED = 16  # frames per clip of the time-normalised variants (DFEW's clip_224x224_16f)
NEARLY_ALL, MIN_CLIPS = 0.9, 10  # the 16-frame warning: this share of a list's clips, at least this many
FAST_SAMPLE = 16  # clips per list that the fast check opens for the layout warnings (evenly spread)


def _check_layout(csv: str, clips: list[tuple[Annotation, ClipInfo]], data_set: str, sampled: bool,
                  problems: list[Problem]) -> None:
    """Warn when a list's clips are not those the released checkpoints were trained on: nearly all of exactly 16
    frames (a time-normalised variant), or frames of another size than the distributed ones."""
    layout = LAYOUTS[data_set]
    clips = [(entry, info) for entry, info in clips if info.frames is not None]
    examined = f"{len(clips)} clips examined" + (" (a sample of the list)" if sampled else "")
    sixteen = [entry for entry, info in clips if info.frames == TIME_NORMALISED]
    if len(sixteen) >= MIN_CLIPS and len(sixteen) >= NEARLY_ALL * len(clips):
        problems.append(Problem(WARNING, "variant", csv, f"{len(sixteen)} of {examined} have exactly "
                                f"{TIME_NORMALISED} frames (e.g. {sixteen[0].path}): a time-normalised variant, "
                                f"as DFEW's clip_224x224_16f? The released checkpoints were trained on "
                                f"{layout.trained_on}"))
    if layout.frame_size is not None:
        other = [(entry, size) for entry, info in clips for size in info.sizes[:1] if size != layout.frame_size]
        if other:
            sizes = Counter(f"{w}x{h}" for _, (w, h) in other)
            w, h = layout.frame_size
            problems.append(Problem(WARNING, "frame_size", csv, f"frames of {', '.join(sizes)} in {len(other)} of "
                                    f"{examined} (e.g. {other[0][0].path}), not the {w}x{h} of {data_set}'s "
                                    f"distributed face frames: extracted or resized by yourself? The released "
                                    f"checkpoints were trained on {layout.trained_on}"))


# ---------------------------------------------------------------------------------------------------------------
# Lists

@dataclass
class _Line:
    entry: Annotation
    csv: str
    line: int


def _parse(csv_path: str, nb_classes: int | None, data_root: str | None,
           problems: list[Problem]) -> tuple[list[_Line], FileSummary]:
    """Every well-formed line of one list; every other line becomes a problem (nothing stops at the first one)."""
    summary, before = FileSummary(), len(problems)
    try:
        with open(csv_path, encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        problems.append(Problem(ERROR, "file", csv_path, f"cannot read the list: {err}"))
        return [], summary
    if "\r" in text:
        problems.append(Problem(WARNING, "format", csv_path, "CRLF line endings (the format is LF)"))
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{csv_path}:{number}"
        if not line:  # as read_annotations: skipped; a line of spaces is malformed
            problems.append(Problem(WARNING, "blank", where, "blank line (the loader skips it)"))
            continue
        try:
            clip_id, label = parse_line(line, nb_classes)
        except ValueError as err:
            kind = "malformed" if str(err).startswith("expected") else "label"
            problems.append(Problem(ERROR, kind, where, str(err)))
            continue
        path = os.path.join(data_root, clip_id) if data_root is not None else clip_id
        rows.append(_Line(Annotation(clip_id, path, label, where), csv_path, number))
        summary.entries += 1
        summary.labels[label] += 1
    if not rows and not any(p.severity == ERROR for p in problems[before:]):
        problems.append(Problem(ERROR, "empty_list", csv_path, "no entries"))
    return rows, summary


def _key(entry: Annotation) -> str:
    return os.path.normpath(entry.path)


def _check_duplicates(rows: list[_Line], problems: list[Problem]) -> None:
    """The same path twice in one list weighs it twice; the originals' writer would have collapsed it."""
    seen: dict[str, _Line] = {}
    for row in rows:
        first = seen.setdefault(_key(row.entry), row)
        if first is not row:
            conflict = "" if first.entry.label == row.entry.label else \
                f" with another label ({first.entry.label} there, {row.entry.label} here)"
            problems.append(Problem(ERROR, "duplicate", row.entry.source,
                                    f"{row.entry.clip_id} is already listed at line {first.line}{conflict}"))


def _role(csv_path: str) -> str:
    stem = Path(csv_path).stem.lower()
    return next((role for role in ("train", "val", "test") if stem.startswith(role)), "other")


def _check_splits(lists: dict[str, list[_Line]], problems: list[Problem]) -> None:
    """Training clips must not be evaluated on; the test folds of a cross-validation must partition the data."""
    by_dir: dict[Path, dict[str, dict[str, _Line]]] = defaultdict(dict)
    labels: dict[str, _Line] = {}
    for csv, rows in lists.items():
        by_dir[Path(csv).parent][_role(csv)] = {_key(r.entry): r for r in rows}
        for row in rows:
            first = labels.setdefault(_key(row.entry), row)
            if first.entry.label != row.entry.label and first.csv != row.csv:
                problems.append(Problem(ERROR, "label", row.entry.source, f"{row.entry.clip_id} has label "
                                        f"{row.entry.label} here but {first.entry.label} at {first.entry.source}"))
    for roles in by_dir.values():
        train = roles.get("train", {})
        for held_out in ("val", "test"):
            for key in train.keys() & roles.get(held_out, {}).keys():
                row = train[key]
                problems.append(Problem(ERROR, "overlap", row.entry.source, f"{row.entry.clip_id} is also in "
                                        f"{held_out} ({roles[held_out][key].entry.source}): trained on and tested"))
    folds_by_parent: dict[Path, dict[Path, dict[str, dict[str, _Line]]]] = defaultdict(dict)
    for folder, roles in by_dir.items():
        if _FOLD_DIR.match(folder.name) and "test" in roles:
            folds_by_parent[folder.parent][folder] = roles
    for folds in folds_by_parent.values():
        if len(folds) > 1:
            _check_partition(folds, problems)


def _check_partition(folds: dict[Path, dict[str, dict[str, _Line]]], problems: list[Problem]) -> None:
    owner: dict[str, _Line] = {}
    everything: set[str] = set()
    for roles in folds.values():
        for rows in roles.values():
            everything |= rows.keys()
    for folder, roles in sorted(folds.items()):
        for key, row in roles["test"].items():
            first = owner.setdefault(key, row)
            if first is not row:
                problems.append(Problem(ERROR, "partition", row.entry.source, f"{row.entry.clip_id} is in two "
                                        f"test folds (also {first.entry.source})"))
        if "train" in roles:
            missing = everything - roles["train"].keys() - roles["test"].keys()
            if missing:
                problems.append(Problem(ERROR, "partition", str(folder), f"{len(missing)} clips of the other folds "
                                        f"are in neither train nor test here, e.g. {sorted(missing)[0]}"))
    missing = everything - owner.keys()
    if missing:
        problems.append(Problem(ERROR, "partition", str(next(iter(folds)).parent), f"{len(missing)} clips are in no "
                                f"test fold, e.g. {sorted(missing)[0]}: the folds do not cover the data"))


def check_annotations(csv_paths: Iterable[str | os.PathLike], nb_classes: int | None, data_root: str | None = None,
                      *, class_names: Sequence[str] | None = None, frame_ext: str = "jpg", num_frames: int = 16,
                      sampling_rate: int = 4, deep: bool = True, decode: bool = False, workers: int = 1,
                      progress: bool = False, data_set: str | None = None) -> Report:
    """Check annotation lists; nb_classes None accepts any integer label (unlabelled pretraining lists).

    deep=False checks only what needs no file opening (lines, labels, duplicates, splits, existence of every path),
    and for a data_set of LAYOUTS opens a few clips per list (FAST_SAMPLE) for the layout warnings.
    Each distinct path is inspected once, its problems reported at its first line.
    """
    problems: list[Problem] = []
    lists, files = {}, {}
    for csv in map(str, csv_paths):
        lists[csv], files[csv] = _parse(csv, nb_classes, data_root, problems)
        _check_duplicates(lists[csv], problems)
        absent = [] if nb_classes is None or not lists[csv] else \
            [c for c in range(nb_classes) if not files[csv].labels[c]]
        if absent:
            names = [class_names[c] if class_names else str(c) for c in absent]
            problems.append(Problem(WARNING, "class", csv, f"no clips of class {', '.join(names)}: its recall (UAR) "
                                    "is undefined here, or it is never learned"))
    _check_splits(lists, problems)

    first: dict[str, _Line] = {}
    for rows in lists.values():
        for row in rows:
            first.setdefault(_key(row.entry), row)
    if deep:
        jobs = [(row.entry, frame_ext, num_frames, sampling_rate, decode) for row in first.values()]
        bar = dict(total=len(jobs), disable=not progress, unit="clip", desc="checking", mininterval=1)
        if workers > 1:
            with Pool(workers) as pool:
                infos = list(tqdm(pool.imap(_inspect_star, jobs, chunksize=32), **bar))
        else:
            infos = [inspect_clip(*job) for job in tqdm(jobs, **bar)]
        clips = dict(zip(first, infos))
    else:
        clips = {key: ClipInfo(issues=[] if os.path.exists(row.entry.path) else
                               [(ERROR, "missing", f"{row.entry.path}: no such file or folder")])
                 for key, row in first.items()}
    listed = Counter(_key(row.entry) for rows in lists.values() for row in rows)
    for key, info in clips.items():
        also = f" (also at {listed[key] - 1} more lines)" if listed[key] > 1 else ""
        problems += [Problem(sev, kind, first[key].entry.source, msg + also) for sev, kind, msg in info.issues]
    for csv, rows in lists.items():
        for row in rows:
            info = clips[_key(row.entry)]
            if info.frames is not None:
                files[csv].frames.append(info.frames)
            files[csv].sizes.update(info.sizes)
    if data_set in LAYOUTS:
        inspect = partial(inspect_clip, frame_ext=frame_ext, num_frames=num_frames, sampling_rate=sampling_rate,
                          decode=False)
        _check_layouts(lists, None if deep else inspect, clips, data_set, problems)
    return Report(class_names, files, problems)


def _check_layouts(lists: dict[str, list[_Line]], inspect: Callable[[Annotation], ClipInfo] | None,
                   clips: dict[str, ClipInfo], data_set: str, problems: list[Problem]) -> None:
    """The layout warnings of each list: from the clips inspected already, or (`inspect` given: the fast check) from a
    few clips per list opened now."""
    opened: dict[str, ClipInfo] = {}
    for csv, rows in lists.items():
        distinct = list({_key(row.entry): row.entry for row in rows}.items())
        sampled = inspect is not None and len(distinct) > FAST_SAMPLE
        if sampled:  # the start of training: a few clips, evenly spread over the list
            distinct = [distinct[i * len(distinct) // FAST_SAMPLE] for i in range(FAST_SAMPLE)]
        examined = []
        for key, entry in distinct:
            if inspect is not None and key not in opened:
                opened[key] = inspect(entry)
            examined.append((entry, clips[key] if inspect is None else opened[key]))
        _check_layout(csv, examined, data_set, sampled, problems)


def check_lists(csv_paths: Iterable[str | os.PathLike], nb_classes: int | None, data_root: str | None = None,
                data_set: str | None = None) -> Report:
    """The fast check at the start of training: raises DataCheckError listing every error (file:line: what).

    With data_set, the report's warnings include the layout ones (LAYOUTS), from a few clips per list.
    """
    info = DATASETS.get(data_set) if data_set else None
    report = check_annotations(csv_paths, nb_classes, data_root, deep=False, data_set=data_set,
                               frame_ext=info.frame_ext if info else "jpg")
    errors = report.errors
    if errors:
        raise DataCheckError(f"{len(errors)} errors in the annotation lists (python -m preprocess.check for a full "
                             "report):\n" + "\n".join(map(str, sorted(errors, key=_order))))
    return report

