"""kdenv: learning which teacher knowledge to transfer, and when, while distilling a language model."""

from kdenv import numerics

numerics.apply()  # before anything imports torch: pins the CPU kernels so that results replay anywhere

import gymnasium  # noqa: E402

ENV_ID = "kdenv/KnowledgeSelection-v0"
TABLE_ENV_ID = "kdenv/KnowledgeSelectionTable-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="kdenv.decision.factory:make_env", disable_env_checker=True)
if TABLE_ENV_ID not in gymnasium.registry:
    gymnasium.register(id=TABLE_ENV_ID, entry_point="kdenv.benchmark.table_env:make_table_env")

__version__ = "0.1.0"
