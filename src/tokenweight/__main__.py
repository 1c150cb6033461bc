"""``python -m tokenweight``: the ``tokenweight`` command."""

import sys

from tokenweight.cli import main

if __name__ == "__main__":
    sys.exit(main())
