"""`python -m func.smoke URL`: the post-deployment smoke test, which lives with the
rollout that runs it (func.rollout.smoke); this name is the one users and pipelines call."""

import sys

from .rollout.smoke import main

if __name__ == "__main__":
    sys.exit(main())
