"""`python -m rainstorm`: the `rainstorm` command."""

from rainstorm.cli import main

main()
