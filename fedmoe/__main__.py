"""`python -m fedmoe`: the same as the `fedmoe` command."""

from fedmoe.cli import main

raise SystemExit(main())
