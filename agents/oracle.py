"""The exact answers a schedule table holds: is there anything for an agent to learn?

    python agents/oracle.py --table stsb
    python agents/oracle.py --table mrpc --rewards metric_gain,loss_decrease
    python agents/oracle.py --table path/to/a/table/folder

The program is kdenv.commands.oracle (installed as `kdenv-oracle`); `--help` lists every flag.
"""

import sys

from kdenv.commands.oracle import main

if __name__ == "__main__":
    sys.exit(main())
