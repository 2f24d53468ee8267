"""``python -m ncil <verb> ...``: the entry point; the verbs, their parser and the error handling are
ncil/cli.py's."""

import sys

from ncil.cli import main

if __name__ == "__main__":
    sys.exit(main())
