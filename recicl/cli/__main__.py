"""``python -m recicl.cli``: the ``recicl`` command (tests and Ray jobs run it this way)."""

from recicl.cli import main

main()
