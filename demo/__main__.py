"""`python -m demo`: see demo/cli.py."""

from demo.cli import main

raise SystemExit(main())
