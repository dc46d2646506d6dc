"""`python3 -m xe_eudebug.sim`: run the simulated Xe driver in the foreground."""

import sys

from .launch import main

if __name__ == "__main__":
    sys.exit(main())
