"""``python -m catalens``."""

from catalens.cli import main

main()
