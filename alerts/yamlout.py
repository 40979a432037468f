"""YAML for generated files: stable key order, no anchors, long expressions on one line."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)


def dump_all(docs: list[Any]) -> str:
    """Several documents in one stream, as ``kubectl apply -f`` takes them."""
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)
