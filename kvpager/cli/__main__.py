"""`python -m kvpager.cli`: the same as the `kvpager` command."""

from kvpager.cli import main

main()
