"""``python -m catalens``."""

from catalens.cli.commands import main

main()
