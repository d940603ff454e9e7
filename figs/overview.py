"""Draw figs/overview.png, the model overview of README.md and docs/ARCHITECTURE.md: python figs/overview.py"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

BOXES = {  # name: (x, y, width, text, colour)
    "clip": (0.0, 1.0, 1.5, "face clip\n16 x 160 x 160", "#dddddd"),
    "embed": (2.0, 1.0, 1.6, "tubelets 2x16x16\n800 tokens + positions", "#cfe2f3"),
    "lgi": (4.1, 1.0, 2.2, "LGI-Former x16\nlocal | global (region tokens)\n| local-global", "#9fc5e8"),
    "pool": (6.8, 1.0, 1.5, "mean of the 8\nregion tokens, LN", "#cfe2f3"),
    "fuse": (8.8, 0.5, 0.9, "fusion\nadd | cat\n| pos", "#f9cb9c"),
    "head": (10.2, 0.5, 1.0, "head\n-> classes", "#b6d7a8"),
    "motion": (2.0, 0.0, 1.6, "motion image\nmean - first frame", "#fce5cd"),
    "ca": (4.1, 0.0, 2.2, "CA ResNet: 4 stages with\naccumulated spatial attention", "#f9cb9c"),
    "fc1": (6.8, 0.0, 1.5, "fc1 -> 512, ReLU", "#fce5cd"),
}
ARROWS = [("clip", "embed"), ("embed", "lgi"), ("lgi", "pool"), ("pool", "fuse"), ("fuse", "head"),
          ("clip", "motion"), ("motion", "ca"), ("ca", "fc1"), ("fc1", "fuse")]


def main() -> None:
    fig, ax = plt.subplots(figsize=(12, 2.6))
    centres = {}
    for name, (x, y, w, text, colour) in BOXES.items():
        ax.add_patch(FancyBboxPatch((x, y), w, 0.7, boxstyle="round,pad=0.05", fc=colour, ec="#444444"))
        ax.text(x + w / 2, y + 0.35, text, ha="center", va="center", fontsize=8)
        centres[name] = (x, y, w)
    for a, b in ARROWS:
        xa, ya, wa = centres[a]
        xb, yb, _ = centres[b]
        ax.add_artist(FancyArrowPatch((xa + wa + 0.05, ya + 0.35), (xb - 0.05, yb + 0.35), arrowstyle="-|>",
                                      mutation_scale=10, color="#444444"))
    ax.text(4.1, 1.85, "MAE-DFER: encoder pretrained as a masked autoencoder on VoxCeleb2, then fine-tuned",
            fontsize=8)
    ax.text(2.0, -0.3, "MAE-DFER-CA: the motion branch (--fusion add / cat / pos; none = plain MAE-DFER)",
            fontsize=8)
    ax.set_xlim(-0.1, 11.4)
    ax.set_ylim(-0.45, 2.05)
    ax.axis("off")
    fig.savefig(Path(__file__).with_name("overview.png"), dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
