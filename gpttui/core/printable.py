"""Text a model wrote, made safe to show: control characters become visible symbols.

A model can sample any character its tokenizer can spell, control characters included (a byte-level
model trained on a few hundred kB sampled an ESC at seed 42). Sent raw, an ESC (0x1b) or a CSI
(0x9b) starts an ANSI escape sequence that the terminal obeys (colours, cursor moves, clearing the
screen) and that Textual swallows together with the characters after it; a BEL rings, a lone CR
overwrites the line. So the app always shows them as symbols, and ``gpttui generate`` does unless
``--raw``. This module decides, once for both, what is a control character:

* C0 (0x00–0x1f) except newline and tab, which are text; a CR right before a newline (CRLF) is a
  line break too and is dropped, a lone CR is shown;
* DEL (0x7f) and C1 (0x80–0x9f).

Each control character is shown on its own: C0 and DEL as their Unicode "control picture"
(U+2400–U+2421: ␛ for ESC, ␇ for BEL, ␡ for DEL), C1 (which has no pictures) as ``\\x9b``. An ANSI
sequence is thereby harmless as a whole: its introducer (ESC or CSI) is shown as a symbol and the
rest of it (``[31m``) is the plain text it always was, so "\\x1b[31m" reads "␛[31m".
"""

from __future__ import annotations

import re

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 but \t and \n, DEL, C1
_SPLIT = re.compile("(\r\n|[\x00-\x08\x0b-\x1f\x7f-\x9f])")


def is_control(ch: str) -> bool:
    """Whether the character ``ch`` is one a terminal would obey rather than show."""
    return CONTROL.fullmatch(ch) is not None


def visible(ch: str) -> str:
    """The symbol shown for the control character ``ch``."""
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    return f"\\x{code:02x}"


def split_controls(text: str) -> list[tuple[str, bool]]:
    """``text`` as pieces ``(shown text, was a control character)``, in order, for a renderer that
    styles the symbols; CRLF comes out as a plain newline."""
    pieces: list[tuple[str, bool]] = []
    for part in _SPLIT.split(text):
        if not part:
            continue
        if part == "\r\n":
            pieces.append(("\n", False))
        elif len(part) == 1 and is_control(part):
            pieces.append((visible(part), True))
        else:
            pieces.append((part, False))
    return pieces


def escape_controls(text: str) -> str:
    """``text`` with every control character shown as its symbol (see the module's docstring)."""
    return "".join(piece for piece, _ in split_controls(text))


class StreamEscaper:
    """:func:`escape_controls` for text that arrives in pieces (streamed tokens): a CR at the end of
    a piece waits for the next one, which says whether it was half of a CRLF. Call :meth:`flush` at
    the end."""

    def __init__(self) -> None:
        self._pending = ""

    def pieces(self, text: str) -> list[tuple[str, bool]]:
        """The next piece of the stream, as :func:`split_controls` gives it."""
        text = self._pending + text
        self._pending = ""
        if text.endswith("\r"):
            text, self._pending = text[:-1], "\r"
        return split_controls(text)

    def feed(self, text: str) -> str:
        """The next piece of the stream, escaped."""
        return "".join(piece for piece, _ in self.pieces(text))

    def flush_pieces(self) -> list[tuple[str, bool]]:
        text, self._pending = self._pending, ""
        return split_controls(text)

    def flush(self) -> str:
        """What was held back (a CR that ended the stream, shown as a symbol)."""
        return "".join(piece for piece, _ in self.flush_pieces())


_BLANK_NAMES = {"\n": "newline", " ": "space", "\t": "tab"}


def describe_blank(text: str) -> str | None:
    """For a text that shows nothing (only spaces, tabs, newlines or other blank characters, no
    control character, which would show as a symbol): what it holds, e.g. "3 newlines, 1 space";
    None for a text that shows something. Empty text: "nothing"."""
    if not text:
        return "nothing"
    if not text.isspace() or CONTROL.search(text.replace("\r\n", "\n")):
        return None
    counts: dict[str, int] = {}
    for ch in text.replace("\r\n", "\n"):
        name = _BLANK_NAMES.get(ch, "other blank character")
        counts[name] = counts.get(name, 0) + 1
    order = ["newline", "space", "tab", "other blank character"]
    return ", ".join(f"{counts[n]} {n}{'s' if counts[n] != 1 else ''}" for n in order if n in counts)


def blank_reply_note(text: str) -> str | None:
    """What to say of a reply that shows nothing (see :func:`describe_blank`); None otherwise."""
    what = describe_blank(text)
    if what is None:
        return None
    if what == "nothing":
        return "(the model replied with nothing)"
    return f"(the model replied with whitespace only: {what})"
