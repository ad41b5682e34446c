"""Regression gate, baselines and run comparison (``tokenbench gate|compare|baseline save``).

Modules: ``samples`` (per-request samples of a step), ``rundata`` (run folder
→ ``GateRun``), ``baseline`` (compact committed baselines, env fingerprint),
``match`` (pair steps by configuration identity), ``stats`` (bootstrap, rank
test), ``measure`` (metric + bootstrap per step), ``policy`` (YAML rules),
``verdict`` (rules → verdicts), ``outputs`` (Markdown, JUnit, JSON),
``comparison`` and ``compare_report`` (``compare``), ``commands`` (CLI).
"""
