"""Imports ``os`` and re-exports ``os.system``, as ordinary modules do; only
``shout`` and ``Prefixer`` are defined here."""

from __future__ import annotations

import os  # noqa: F401  (the attack reaches it as tests.hostile.mod:os.system)
from os import system  # noqa: F401  (re-exported: tests.hostile.mod:system)


def shout(word: str) -> str:
    return word.upper()


def _hidden(word: str) -> str:
    return word


class Prefixer:
    """A factory defined here: ``tests.hostile.mod:Prefixer`` with args."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, word: str) -> str:
        return self.prefix + word
