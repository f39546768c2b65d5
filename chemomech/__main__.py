"""`python -m chemomech ...` is the `chemomech` command."""

from chemomech.cli import main

raise SystemExit(main())
