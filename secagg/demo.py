"""`python -m secagg.demo` (kept for users): the tool lives in `secagg.tools.demo`."""

import sys

from secagg.tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
