"""Replay schedules of a table on the live trainer and check every recorded observation and
reward. On the CPU, with the table's teacher, software and thread count, the match is exact.

    python agents/validate_table.py --table stsb                      # the oracle schedule of each seed
    python agents/validate_table.py --table stsb --seed 2 --schedule 7,0,3

The program is kdenv.commands.validate_table (installed as `kdenv-validate-table`); `--help` lists every flag.
"""

import sys

from kdenv.commands.validate_table import main

if __name__ == "__main__":
    sys.exit(main())
