"""The regime survey: where might time-varying knowledge selection pay? (kdenv/commands/regimes.py)

    python agents/regimes.py
"""

import sys

from kdenv.commands.regimes import main

if __name__ == "__main__":
    sys.exit(main())
