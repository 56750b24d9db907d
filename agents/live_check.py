"""Take a leaderboard agent row off its table and onto the real trainer, on episode seeds no table holds.

    python agents/live_check.py --table stsb_u8 --row ppo-tuned       # 16 new seeds, against the best constant

The program is kdenv.commands.live_check (installed as `kdenv-live-check`); `--help` lists every flag.
"""

import sys

from kdenv.commands.live_check import main

if __name__ == "__main__":
    sys.exit(main())
