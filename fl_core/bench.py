"""`python -m fl_core.bench` (kept for users): the tool lives in `fl_core.tools.bench`."""

import sys

from fl_core.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
