"""Hyperparameter search on a schedule table (Optuna, TPE), then default against tuned on held-out seeds.

    python agents/tune_table.py --algo ppo --table stsb
    python agents/tune_table.py --algo dqn --table mrpc --trials 40 --train-seeds 0,1,2 --test-seeds 3

The program is kdenv.commands.tune_table (installed as `kdenv-tune-table`); `--help` lists every flag.
"""

import sys

from kdenv.commands.tune_table import main

if __name__ == "__main__":
    sys.exit(main())
