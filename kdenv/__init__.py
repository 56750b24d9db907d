"""kdenv: learning which teacher knowledge to transfer, and when, while distilling a language model."""

import gymnasium

ENV_ID = "kdenv/KnowledgeSelection-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="kdenv.decision.factory:make_env", disable_env_checker=True)

__version__ = "0.1.0"
