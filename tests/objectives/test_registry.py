"""The objective registry: unknown names and options are errors that say what is wrong."""

import pytest

from bico.objectives import build_objective


def test_registry_errors(tokenizer):
    with pytest.raises(ValueError, match="unknown objective 'nope'"):
        build_objective("nope", tokenizer)
    with pytest.raises(ValueError, match="has no option"):
        build_objective("bico", tokenizer, {"mask_rate": 0.2})
    with pytest.raises(ValueError, match="mask_ratio"):
        build_objective("bico", tokenizer, {"mask_ratio": 1.5})
