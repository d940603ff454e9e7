"""VoxCeleb2 (docs/DATASETS.md): info_clean.csv, the pretraining list of every dev video decord can open.

    python -m preprocess.voxceleb2 --root /data/VoxCeleb2/dev/mp4 [--workers 8] [--out saved/data/voxceleb2]

Opens every <root>/<idNNNNN>/<video id>/<NNNNN>.mp4 with decord, in parallel and with a progress bar; writes
info_clean.csv (`<path> 0`, 0 a dummy label, sorted by path) and broken.txt (`<path> <reason>`), one per line.
The originals pasted one machine's decord errors instead (283 of 1,092,009 files).
"""

from __future__ import annotations

if not __package__:  # run as `python preprocess/<name>.py`: the repository root goes on sys.path
    import _bootstrap  # noqa: F401

import os
from multiprocessing import Pool

from tqdm import tqdm

from preprocess.common import absolute, cli, entry_path, finish, parser, write_list


def probe(path: str) -> str | None:
    """Why decord cannot use the video (its error on one line), or None if it opens with at least one frame."""
    import decord

    try:
        frames = len(decord.VideoReader(path, num_threads=1))
    except Exception as err:
        return " ".join(str(err).split()) or type(err).__name__
    return None if frames else "no frames"


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.splitlines()[0], "voxceleb2").parse_args(argv)
    root = absolute(args.root)
    # Sorted, so that the list does not depend on the file system's order (the originals' glob order).
    videos = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*/*.mp4"))
    if not videos:
        raise SystemExit(f"{root}: no <speaker>/<video>/<utterance>.mp4 files (give the dev/mp4 folder)")
    paths = [os.path.join(root, v) for v in videos]
    with Pool(max(args.workers, 1)) as pool:
        reasons = list(tqdm(pool.imap(probe, paths, chunksize=16), total=len(paths), unit="video", desc="opening"))
    broken = [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]
    written = write_list(args.out / "info_clean.csv",
                         ((entry_path(root, v, args.relative), 0) for v, r in zip(videos, reasons) if r is None))
    (args.out / "broken.txt").write_text("".join(f"{p} {r}\n" for p, r in broken), encoding="utf-8")
    print(f"total {len(videos)}, broken {len(broken)} (listed in {args.out / 'broken.txt'}), "
          f"clean {len(videos) - len(broken)}")
    finish(args, [written], None, deep=False)  # every listed video was just opened


if __name__ == "__main__":
    cli(main)
