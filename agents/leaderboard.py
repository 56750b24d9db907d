"""The leaderboard of knowledge schedules on the shipped tables, with bootstrap 95% intervals.

    python agents/leaderboard.py                       # docs/leaderboard.{md,json,png} from tables + results
    python agents/leaderboard.py --retrain --dry-run   # what retraining every agent row would cost
    python agents/leaderboard.py --retrain             # retrain the agent rows, then write the leaderboard

The program is kdenv.commands.leaderboard (installed as `kdenv-leaderboard`); `--help` lists every flag.
"""

import sys

from kdenv.commands.leaderboard import main

if __name__ == "__main__":
    sys.exit(main())
