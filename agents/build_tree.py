"""Build a schedule table: every knowledge schedule of a short distillation, run from the same
initial student on the real trainer, for several episode seeds.

    python agents/build_tree.py --task stsb --seeds 0-3 --phases 3 --updates-per-phase 4
    python agents/build_tree.py --task stsb --seeds 0-3 --estimate      # the projected cost, split, before building

The program is kdenv.commands.build_tree (installed as `kdenv-build-tree`); `--help` lists every flag.
"""

import sys

from kdenv.commands.build_tree import main

if __name__ == "__main__":
    sys.exit(main())
