"""Ray Job: Feature extraction with Ray Data.

Same arguments, config file and `--set section.key=value` overrides as `conclugen extract`:

    jobs/submit.sh -- python jobs/extract.py --help
"""

import sys
from pathlib import Path

# `ray job submit --working-dir .` runs this as `python jobs/extract.py` from the unpacked working dir:
# put the repo root first so its conclugen/ is imported, not an older installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conclugen.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["extract", *sys.argv[1:]], prog_name="jobs/extract.py")
