"""The SLO core: specs, SLI and error-budget math, and the backends that read counts.

Imports nothing else of the project; every other package may import it.
"""
