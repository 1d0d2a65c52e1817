"""YAML as recipes and ablation specs are read: ``yaml.safe_load``, but a key twice in one mapping is an error."""

from __future__ import annotations

import yaml

from bico.errors import BicoError

__all__ = ["DuplicateKeyError", "load_yaml"]


class DuplicateKeyError(BicoError, yaml.YAMLError):
    """A key written twice in one YAML mapping."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, except that a key twice in one mapping is an error: YAML keeps
    the last one silently, so a second ``train:`` section would replace the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: a key written here may override it
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise DuplicateKeyError(
                        f"line {key_node.start_mark.line + 1}: the key {key!r} appears twice in "
                        "one mapping (YAML would keep only the last); merge the two"
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    """``yaml.safe_load`` that refuses a key written twice in one mapping (:class:`DuplicateKeyError`)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)
