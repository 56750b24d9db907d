"""Evaluate knowledge-selection policies against each other: every policy runs as a full
distillation (same teacher, same initial student, same budget, same seeds) and is scored on GLUE
dev, with teacher–student consistency metrics.

    python agents/evaluate.py --task rte --seeds 3         --policies kd,gkd,gkd-cls,pkd,all,none,random-hard,random-soft,agent:runs/rte/a2c_default/agent.zip

The program is kdenv.commands.evaluate (installed as `kdenv-evaluate`); `--help` lists every flag.
"""

import sys

from kdenv.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
