"""`python -m pyflannel` runs the daemon's command line."""

from pyflannel.cli import main

raise SystemExit(main())
