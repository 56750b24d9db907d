"""Train an RL agent to choose which teacher knowledge to use in each distillation phase, then
compare its schedule with fixed baselines on the same budget.

    python agents/train.py --algo ppo --task rte
    python agents/train.py --algo dqn --task mrpc --total-timesteps 80 --hp learning_rate=1e-3

The program is kdenv.commands.train (installed as `kdenv-train`); `--help` lists every flag.
"""

import sys

from kdenv.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
