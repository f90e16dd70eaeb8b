"""JSON with comments: `//` line comments, `/* */` block comments and trailing commas, as in the seed format files.

Comments and trailing commas are blanked out (replaced by spaces, newlines kept) so that the positions the JSON
parser reports are the positions in the user's file. Syntax errors, duplicate keys and NaN/Infinity are
`ConfigError`s that name the line and column where known.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ConfigError

_WS = " \t\r\n"


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    col = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, col


def strip_jsonc(text: str, source: str = "<string>") -> str:
    """Return `text` with comments and trailing commas replaced by spaces; same length, same line breaks."""
    out = list(text)
    i, n = 0, len(text)
    pending_comma: int | None = None  # index of a comma followed so far only by whitespace/comments
    prev = ""  # previous significant character ('"' for a string)
    while i < n:
        c = text[i]
        if c == '"':
            # a string: copy up to the closing quote, honouring backslash escapes; comment markers inside stay text
            pending_comma = None
            prev = '"'
            j = i + 1
            while j < n and text[j] != '"':
                if text[j] == "\\":
                    j += 1
                elif text[j] == "\n":
                    break  # unterminated string: let the JSON parser report it at its position
                j += 1
            i = j + 1
            continue
        if c == "/" and i + 1 < n and text[i + 1] == "/":
            j = text.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
            continue
        if c == "/" and i + 1 < n and text[i + 1] == "*":
            j = text.find("*/", i + 2)
            if j < 0:
                line, col = _line_col(text, i)
                raise ConfigError(source, f"JSON syntax error at line {line}, column {col}: unterminated /* comment",
                                  "close the comment with */")
            for k in range(i, j + 2):
                if out[k] != "\n":
                    out[k] = " "
            i = j + 2
            continue
        if c in _WS:
            i += 1
            continue
        if c in "}]" and pending_comma is not None:
            out[pending_comma] = " "  # trailing comma before the closing bracket
        # a comma right after another comma, a colon or an opening bracket is a syntax error, not a trailing comma
        pending_comma = i if c == "," and prev not in ",:[{" else None
        prev = c
        i += 1
    return "".join(out)


def _reject_constant(name: str) -> Any:
    raise ConfigError("<json>", f"{name} is not a valid JSON value", "write a finite number")


def loads_jsonc(text: str, source: str = "<string>") -> Any:
    """Parse JSON-with-comments text. Raises ConfigError (with line and column for syntax errors)."""
    clean = strip_jsonc(text.removeprefix("\ufeff"), source)

    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise ConfigError(source, f"key {k!r} appears twice in the same object (JSON keeps only the last)",
                                  f"keep one {k!r} entry")
            out[k] = v
        return out

    try:
        return json.loads(clean, object_pairs_hook=pairs, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ConfigError(source, f"JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}",
                          "fix the JSON at that position (comments // and /* */ and trailing commas are allowed)") from None
    except ConfigError as e:
        if e.path == "<json>":
            raise ConfigError(source, e.problem, e.fix) from None
        raise
    except (ValueError, RecursionError) as e:  # e.g. an integer with too many digits, absurd nesting
        raise ConfigError(source, f"cannot read the JSON: {e}", "fix the value") from None


__all__ = ["loads_jsonc", "strip_jsonc"]
