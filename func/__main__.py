"""python -m func: serve the configured model with the production server.

Every setting comes from the environment (README, "Configuration"): PORT and HOST
where to listen, MODEL_PATH the model (a path or a URI), WORKERS and THREADS the
processes and threads that serve it. For example:

    MODEL_PATH=models/model.onnx PORT=8080 python -m func

Liveness, readiness, metrics and the APIs are then at http://HOST:PORT/.
"""

import argparse
import sys

from .config import ConfigError, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m func", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"warmstart: configuration error: {exc}", file=sys.stderr)
        return 2
    from .server.application import run

    run(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
