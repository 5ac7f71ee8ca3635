"""`python -m authz` runs the command line."""

from .cli import main

main()
