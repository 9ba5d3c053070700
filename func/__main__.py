"""`python -m func`: serve the configured model with the production server."""

import sys

from .config import ConfigError, Settings


def main() -> int:
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
