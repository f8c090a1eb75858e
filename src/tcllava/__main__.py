"""`python -m tcllava ...` (used by `torchrun -m tcllava train ...`)."""

from tcllava.cli import main

raise SystemExit(main())
