"""`python -m func.retrain`: one retraining run (func.retrain.job)."""

import sys

from .job import main

if __name__ == "__main__":
    sys.exit(main())
