"""vitalgate: the composition root (command line and demo).

The only package that imports the others.
"""

__version__ = "0.1.0"
