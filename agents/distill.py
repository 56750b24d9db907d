"""Distil a student from a task's fine-tuned teacher with fixed knowledge weights.

    python agents/distill.py --task rte --knowledge gkd
    python agents/distill.py --task rte --knowledge logits=0.5,hidden=1,gradient=1

The program is kdenv.commands.distill (installed as `kdenv-distill`); `--help` lists every flag.
"""

import sys

from kdenv.commands.distill import main

if __name__ == "__main__":
    sys.exit(main())
