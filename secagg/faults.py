"""`python -m secagg.faults` (kept for users): the tool lives in `secagg.tools.faults`."""

import sys

from secagg.tools.faults import main

if __name__ == "__main__":
    sys.exit(main())
