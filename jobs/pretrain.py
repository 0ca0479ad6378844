"""Ray Job: Pretraining of the ConCluGen heads with Ray Train.

Same arguments, config file and `--set section.key=value` overrides as `conclugen pretrain`:

    jobs/submit.sh -- python jobs/pretrain.py --help
"""

import sys
from pathlib import Path

# `ray job submit --working-dir .` runs this as `python jobs/pretrain.py` from the unpacked working dir:
# put the repo root first so its conclugen/ is imported, not an older installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conclugen.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["pretrain", *sys.argv[1:]], prog_name="jobs/pretrain.py")
