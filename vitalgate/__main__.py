from vitalgate.cli import main

raise SystemExit(main())
