"""`python -m dp.bench` (kept for users): the tool lives in `dp.tools.bench`."""

import sys

from dp.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
