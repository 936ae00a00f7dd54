"""``python -m dp``: see ``dp.cli``."""

from dp.cli import main

raise SystemExit(main())
