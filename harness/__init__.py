"""The harness's machinery behind prepare.py: read-only, and nothing here runs at import.

prepare.py is the contract (budget, metric, guard, summary); harness/README.md says how these modules fit.
"""
