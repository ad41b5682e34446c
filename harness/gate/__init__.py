"""Regression gate, baselines and run comparison (``tokenbench gate|compare|baseline save``).

Modules: ``samples`` (per-request samples of a step), ``rundata`` (run folder
→ ``GateRun``), ``baseline`` (compact committed baselines, env fingerprint),
``match`` (pair steps by configuration identity), ``stats`` (bootstrap, rank
test), ``orderstat`` (distribution-free percentile intervals, t quantiles),
``measure`` (metric + within-run interval + per-repeat values per step),
``interval`` (the change's interval: within-run, and between runs with
repeats pooled), ``policy`` (YAML rules), ``verdict`` (rules → verdicts),
``outputs`` (Markdown, JUnit, JSON), ``comparison``, ``configdiff`` and
``compare_report`` (``compare``), ``commands`` (CLI), ``aa`` (A/A reruns:
does a policy stay quiet when nothing changed).
"""
