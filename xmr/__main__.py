"""`python -m xmr`: the same command line as the `xmr` script."""

from xmr.cli import main

main()
