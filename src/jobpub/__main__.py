from jobpub.cli import main

raise SystemExit(main())
