"""featrob benchmarks: each module measures featrob against a reference in one run.

Run one with ``python -m benchmarks.attacks``; every script prints its ratios and can write
them as JSON (``--json FILE``) so two runs can be compared.
"""
