"""What the CLI prints from Redis (keys of the data, workers' errors, dead
letters) reaches a terminal with its control characters escaped: checked
against unicodedata's own classification, not against the table in
rainstorm.cli.show."""

from __future__ import annotations

import unicodedata

from rainstorm.cli.show import printable

BIDI_CONTROLS = {*range(0x202A, 0x202F), *range(0x2066, 0x206A)}  # embeddings, overrides, isolates


def test_every_control_but_tab_and_newline_is_escaped_and_nothing_else_changes() -> None:
    for cp in range(0x3000):
        c = chr(cp)
        control = (unicodedata.category(c) == "Cc" and c not in "\t\n") or cp in BIDI_CONTROLS
        got = printable(c)
        if control:
            assert got == (f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}"), hex(cp)
        else:
            assert got == c, hex(cp)


def test_text_around_escapes_is_kept() -> None:
    assert printable("a\x1b[31mred\x1b[0m\tb\nc\u202ed") == "a\\x1b[31mred\\x1b[0m\tb\nc\\u202ed"
    assert printable("[/bold] naïve 日本") == "[/bold] naïve 日本"
