"""`python -m secagg.attacks` (kept for users): the tool lives in `secagg.tools.attacks`."""

import sys

from secagg.tools.attacks import main

if __name__ == "__main__":
    sys.exit(main())
