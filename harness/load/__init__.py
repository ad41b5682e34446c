"""The Locust load layer: plans, schedules, prompts, streaming users and the step runner.

Import ``harness.load.runner.run_step`` from the orchestrator; the other
modules are used inside the Locust processes (and by tests).
"""
