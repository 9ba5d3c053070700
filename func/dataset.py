"""`python -m func.dataset`: the prediction log joined with its feedback into a labelled
training set (func.retrain.dataset); this name is the one users and pipelines call."""

import sys

from .retrain.dataset import main

if __name__ == "__main__":
    sys.exit(main())
