"""``python -m dyndisc.cli``: the same as the ``dyndisc`` command."""

from dyndisc.cli import main

main(prog_name="dyndisc")
