"""``python -m supersam.stages.train [options]`` == ``supersam train [options]`` (the torchrun entry point).

Multi-process: ``torchrun --standalone --nproc_per_node K -m supersam.stages.train --params params.yaml``.
"""

import sys

from supersam.cli.main import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "train", *sys.argv[1:]]
    main()
