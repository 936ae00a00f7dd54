from fl_core.cli import main

raise SystemExit(main())
