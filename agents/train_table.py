"""Train RL agents on a schedule table and score them on held-out seeds.

    python agents/train_table.py --algo ppo --table stsb
    python agents/train_table.py --algo dqn --table mrpc --train-seeds 0-2 --test-seeds 3 --episodes 5000
    python agents/train_table.py --algo ppo --table stsb_h100_u8 --hp-file docs/tuned/stsb_h100_u8_ppo.yaml

The program is kdenv.commands.train_table (installed as `kdenv-train-table`); `--help` lists every flag.
"""

import sys

from kdenv.commands.train_table import main

if __name__ == "__main__":
    sys.exit(main())
