"""Ray Job: Hyperparameter search with Ray Tune.

Same arguments, config file and `--set section.key=value` overrides as `conclugen tune`:

    jobs/submit.sh -- python jobs/tune.py --help
"""

import sys
from pathlib import Path

# `ray job submit --working-dir .` runs this as `python jobs/tune.py` from the unpacked working dir:
# put the repo root first so its conclugen/ is imported, not an older installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conclugen.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["tune", *sys.argv[1:]], prog_name="jobs/tune.py")
