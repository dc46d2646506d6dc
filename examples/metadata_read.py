#!/usr/bin/env python3
"""Read debug metadata from an EU debugger: IGT's ``read-metadata`` and ``attach-debug-metadata``.

The runnable example: ``python3 examples/metadata_read.py [--subtest NAME] [-v] [--clients N]
[--pattern seed|igt]``.  The code, with the walk-through of what happens, is
``xe_eudebug/igt/metadata.py`` (installed with the package; ``xe-eudebug igt --run-subtest
'*metadata'`` runs the same subtests); read it, or copy it to start your own eudebug test.
"""

from __future__ import annotations

import os
import sys

# Run from a checkout without installing anything: when this script sits in the repository,
# use the package next to it (so the example always runs the library it ships with); a copy of
# the script elsewhere uses the installed package.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_REPO, "xe_eudebug", "__init__.py")) and _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from xe_eudebug.igt.metadata import *  # noqa: E402,F401,F403  (the example's names, for importers)
from xe_eudebug.igt.metadata import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
