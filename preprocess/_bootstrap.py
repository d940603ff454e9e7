"""Make `python preprocess/<name>.py` import like `python -m preprocess.<name>`.

Run as a file, a script's folder (preprocess/) is sys.path[0] and the repository's modules (datasets,
data_check, preprocess.common) are not importable. Imported by each script only in that case, this puts the
repository root in its place, which is what `-m` run from the root would give.
"""

import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
_root = str(_here.parent)
if sys.path and sys.path[0] and Path(sys.path[0]).resolve() == _here:
    sys.path[0] = _root
elif _root not in sys.path:
    sys.path.insert(0, _root)
