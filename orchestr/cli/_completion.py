"""Bash completion of ``file.py:flow`` targets with bash's default ``COMP_WORDBREAKS``.

Bash splits the word being completed at each ``:`` (it is in ``COMP_WORDBREAKS`` by
default), so Click's bash completion would see ``file.py``, ``:`` and ``fl`` as three
words and offer nothing; and bash replaces only the text after the last ``:``, so a
whole ``file.py:flow`` offered back would be doubled. This is Click's bash completion
with the split words joined again (a lone ``:`` is never an argument of ``orchestr``)
and each offer cut to the part after the word's last ``:``, as bash-completion's
``__ltrim_colon_completions`` does. With ``:`` taken out of ``COMP_WORDBREAKS``, bash
does not split, and this is exactly Click's. ``orchestr.cli`` registers it in Click's
place for ``bash``.
"""

from __future__ import annotations

import os
from typing import Any

from click.shell_completion import (
    BashComplete,
    CompletionItem,
    split_arg_string,
)

__all__ = ["ColonBashComplete", "rejoined"]


def rejoined(words: list[str], cword: int) -> tuple[list[str], int, bool]:
    """``words`` (bash's ``COMP_WORDS``) with the words bash split at colons joined
    again; the index of the word ``cword`` is now part of; and whether that word was
    split (so bash replaces only its text after the last colon)."""
    joined: list[str] = []
    split: list[bool] = []
    current = -1
    for i, word in enumerate(words):
        if joined and i > 1 and (word == ":" or words[i - 1] == ":"):
            joined[-1] += word
            split[-1] = True
        else:
            joined.append(word)
            split.append(False)
        if i == cword:
            current = len(joined) - 1
    if current < 0:  # past the last word: a new, empty one
        return joined, len(joined), False
    return joined, current, split[current]


class ColonBashComplete(BashComplete):
    """Click's bash completion, for words bash split at colons."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._replaced = ""  # the start of the word that bash keeps as it is

    def get_completion_args(self) -> tuple[list[str], str]:
        words = split_arg_string(os.environ["COMP_WORDS"])
        joined, current, split = rejoined(words, int(os.environ["COMP_CWORD"]))
        incomplete = joined[current] if current < len(joined) else ""
        if split:
            self._replaced = incomplete[: incomplete.rfind(":") + 1]
        return joined[1:current], incomplete

    def format_completion(self, item: CompletionItem[Any]) -> str:
        value = item.value
        if self._replaced and item.type == "plain" and value.startswith(self._replaced):
            value = value[len(self._replaced) :]
        return f"{item.type},{value}"
