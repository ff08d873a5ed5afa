"""FHIRPath for mappings and flow conditions: strict compile at load, safe evaluation per event.

fhirpathpy's own parser silently recovers from syntax errors and only notices unknown functions
when they run, so load-time checking does both itself: a parse that raises on any syntax error and
must consume the whole expression, and a check of every function name against fhirpathpy's table.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.models import models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

Compiled = Callable[..., list[Any]]
_FUNCTION_CALL = re.compile(r"(?<![\w%$`'])([A-Za-z_]\w*)\s*\(")
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'")
_OPERATORS = frozenset({"in", "and", "or", "xor", "implies", "is", "as", "contains", "div", "mod"})


class FhirPathError(ValueError):
    """A FHIRPath expression that does not parse, or uses a function that does not exist."""


class _Raise(ErrorListener):
    def syntaxError(self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any) -> None:
        # antlr lists every token it expected; the first part of the message is what helps a person.
        raise FhirPathError(f"syntax error at column {column + 1}: {msg.split(' expecting ')[0]}")


def check(expression: str) -> None:
    """Raise FhirPathError unless ``expression`` is well-formed FHIRPath with known functions."""
    if not expression.strip():
        raise FhirPathError("empty expression")
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_Raise())
    stream = CommonTokenStream(lexer)
    parser = FHIRPathParser(stream)
    parser.removeErrorListeners()
    parser.addErrorListener(_Raise())
    try:
        parser.expression()
    except FhirPathError:
        raise
    except Exception as exc:  # antlr raises its own recognition errors from the lexer
        raise FhirPathError(f"syntax error: {exc}") from None
    if stream.LT(1).type != Token.EOF:
        raise FhirPathError(f"unexpected text at column {stream.LT(1).column + 1}: {stream.LT(1).text!r}")
    without_strings = _STRING.sub("''", expression)
    for match in _FUNCTION_CALL.finditer(without_strings):
        name = match.group(1)
        if name not in invocation_registry and name not in _OPERATORS:
            raise FhirPathError(f"unknown function {name}()")


@functools.lru_cache(maxsize=1024)
def compile_path(expression: str) -> Compiled:
    """Check then compile against the R4 model (so choice types like ``value[x]`` resolve).

    Memoized: parsing is slow (antlr in pure Python) and a compiled expression is a pure function.
    Errors are not cached (lru_cache does not keep exceptions), so they are re-raised each time.
    """
    check(expression)
    return fhirpathpy.compile(expression, models["r4"])


def evaluate(fn: Compiled, resource: Mapping[str, Any] | None, env: Mapping[str, Any] | None = None) -> list[Any]:
    """Evaluate; a runtime failure becomes FhirPathError naming the reason."""
    if resource is None:
        return []
    try:
        return list(fn(dict(resource), dict(env or {})))
    except Exception as exc:
        raise FhirPathError(f"evaluation failed: {exc}") from None


def is_true(result: list[Any]) -> bool:
    """FHIRPath boolean semantics for conditions: exactly ``[True]`` is true; empty is false."""
    return len(result) == 1 and result[0] is True


def first_string(result: list[Any]) -> str | None:
    for value in result:
        if isinstance(value, str) and value:
            return value
        if value is not None and not isinstance(value, dict | list):
            return str(value)
    return None
