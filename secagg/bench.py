"""`python -m secagg.bench` (kept for users): the tool lives in `secagg.tools.bench`."""

import sys

from secagg.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
