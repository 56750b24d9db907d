"""The benchmark: exhaustive schedule trees of short distillations (``tree``), shipped as tables
(``table``), replayed by an environment without any model (``table_env``), solved exactly
(``oracle``) and checked against the live trainer (``validate``)."""
