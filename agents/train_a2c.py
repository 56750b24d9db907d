"""Train an A2C agent that picks the teacher knowledge of each distillation phase.

    python agents/train_a2c.py --task rte

The main kdenv command: A2C (stable-baselines3) over the default environment (on/off choice of
logits, hidden and gradient knowledge, cross-entropy always on, 4 phases x 8 updates per episode),
then a final comparison of the learned schedule with the all-on and KD baselines on the same
budget, scored on GLUE dev. Same flags as agents/train.py (which swaps in other algorithms);
hyperparameters in kdenv/decision/hyperparams/a2c.yaml.
"""

import sys

from kdenv.commands.train import main

if __name__ == "__main__":
    sys.exit(main(default_algo="a2c", description=__doc__))
