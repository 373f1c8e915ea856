from cct.cli import main

raise SystemExit(main())
