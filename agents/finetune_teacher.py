"""Fine-tune the teacher of a GLUE task and save it under runs/teachers/<task>/.

    python agents/finetune_teacher.py --task rte --data-dir ../shared/data/glue

The program is kdenv.commands.finetune_teacher (installed as `kdenv-finetune-teacher`); `--help` lists every flag.
"""

import sys

from kdenv.commands.finetune_teacher import main

if __name__ == "__main__":
    sys.exit(main())
