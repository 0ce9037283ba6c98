"""``python -m vramcalc``: the command line."""

from vramcalc.cli import main

main()
