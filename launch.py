"""Set up and start the web UI: ``python3 launch.py [flags] [COMMAND [ARGS ...]]`` (``--help`` lists them).

Creates ``venv/`` on the first run (or uses the active virtual environment), installs torch and the pinned
dependencies, then starts the application or the given command (``test`` runs the test suite).
"""

import sys

if sys.version_info < (3, 10):
    sys.exit(f"launch.py needs Python 3.10 or newer; this is {sys.version.split()[0]} ({sys.executable})")

from pathlib import Path  # noqa: E402

from modules import launch_utils  # noqa: E402

if __name__ == "__main__":
    try:
        sys.exit(launch_utils.main(sys.argv[1:], Path(__file__).resolve()))
    except KeyboardInterrupt:
        sys.exit(130)
