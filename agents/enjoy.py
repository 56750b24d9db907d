"""Replay an agent rl_zoo3 trained on a kdenv environment, running no code from its files (the
safe replacement for `python -m rl_zoo3.enjoy`, which unpickles the run's files):

    python agents/enjoy.py --algo ppo --env kdenv/KnowledgeSelectionTable-v0 -f runs/zoo --exp-id 1 \
        --env-kwargs task:"'stsb'" -n 30 --deterministic

The program is kdenv.commands.enjoy (installed as `kdenv-enjoy`); `--help` lists every flag.
"""

import sys

from kdenv.commands.enjoy import main

if __name__ == "__main__":
    sys.exit(main())
