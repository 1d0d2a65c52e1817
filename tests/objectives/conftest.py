"""The objectives' tests share the session tokenizer (tests/conftest.py), copied per test."""

import copy

import pytest


@pytest.fixture
def tok(tokenizer):
    return copy.deepcopy(tokenizer)  # objectives may add special tokens
