"""`python3 -m xe_eudebug`: the ``xe-eudebug`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
