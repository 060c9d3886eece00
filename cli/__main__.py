"""`python -m cli` is the `berth` command."""

from cli.app import main

main()
