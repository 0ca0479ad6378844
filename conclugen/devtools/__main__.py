"""``python -m conclugen.devtools start|stop --dir DIR`` (see :mod:`conclugen.devtools.cli`)."""

import sys

from conclugen.devtools.cli import main

if __name__ == "__main__":
    sys.exit(main())
