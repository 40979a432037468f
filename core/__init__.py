"""The foundation every package stands on, with nothing SLO-specific in it.

Every name the gateway emits or reserves (``core.conventions``), durations
(``core.durations``) and the config-file reader with positions, its problem type and the
address types (``core.configfile``). It imports nothing of the project. The compiled request
path imports only ``core.conventions`` and ``core.durations``, which are pure standard
library; ``core.configfile`` parses YAML and validates with pydantic, and is read only by
the config loaders, never by the data plane (tests/test_layout.py checks both at run time).
"""
