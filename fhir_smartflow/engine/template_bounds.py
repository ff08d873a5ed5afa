"""Bounds on what rendering one template may cost, in the Jinja2 sandbox itself (no threads, no signals:
the engine stays pure). A template comes from a flow author, and every template is rendered when a
service starts (``validate``, ``serve``, ``worker``), so a runaway one must fail fast, not hang.

Per render, counted in a `Budget` (one per render, through a context variable):
- steps: every loop iteration (each ``for`` iterable is wrapped at parse time) and every call (macros,
  methods) costs one; beyond ``MAX_STEPS`` the render stops;
- sizes: ``range()`` up to ``MAX_RANGE`` items; ``*`` of a string / list, ``%`` formatting and every
  call or filter result up to ``MAX_OUTPUT_CHARS``; ``**`` up to ``MAX_POWER_BITS`` bits; a numeric
  argument of a call or filter (a width, a count) up to ``MAX_OUTPUT_CHARS``;
- output: the rendered text stops at ``MAX_OUTPUT_CHARS``.
Constant folding at compile time is off (``optimized=False``): ``{{ 'x' * 10**10 }}`` would otherwise
be computed while compiling, before any bound applies.
"""

from __future__ import annotations

import contextvars
import functools
import operator
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2 import Environment, StrictUndefined, nodes
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

MAX_STEPS = 100_000
MAX_RANGE = 10_000
MAX_OUTPUT_CHARS = 100_000
MAX_POWER_BITS = 4_096

_BOUNDED = "smartflow_bounded"
_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("template_budget", default=None)


class TemplateTooCostly(Exception):
    """A render went beyond one of the bounds above."""


class Budget:
    def __init__(self, steps: int = MAX_STEPS) -> None:
        self.left = steps

    def step(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise TemplateTooCostly(f"more than {MAX_STEPS:,} loop iterations or calls in one render")


def _step() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.step()


def _sized(value: Any) -> Any:
    if isinstance(value, str | bytes | list | tuple | dict) and len(value) > MAX_OUTPUT_CHARS:
        raise TemplateTooCostly(f"a value of more than {MAX_OUTPUT_CHARS:,} characters or items")
    return value


def _check_numbers(args: Iterable[Any]) -> None:
    for arg in args:
        if isinstance(arg, int | float) and not isinstance(arg, bool) and abs(arg) > MAX_OUTPUT_CHARS:
            raise TemplateTooCostly(f"a width or count above {MAX_OUTPUT_CHARS:,} ({arg:.3g})")


def _bounded_iter(value: Any) -> Iterator[Any]:
    for item in value:
        _step()
        yield item


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise TemplateTooCostly(f"range() of {len(numbers):,} items (at most {MAX_RANGE:,})")
    return numbers


def _power(base: Any, exponent: Any) -> Any:
    big = isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0
    if big and base.bit_length() * exponent > MAX_POWER_BITS:
        raise TemplateTooCostly(f"a power of more than {MAX_POWER_BITS:,} bits")
    return base**exponent


def _times(left: Any, right: Any) -> Any:
    for seq, count in ((left, right), (right, left)):
        sequence = isinstance(seq, str | bytes | list | tuple) and isinstance(count, int)
        if sequence and len(seq) * count > MAX_OUTPUT_CHARS:
            raise TemplateTooCostly(f"a repetition of {len(seq) * count:,} characters or items")
    return left * right


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "*": _times,
    "**": _power,
    "%": lambda left, right: _sized(operator.mod(left, right)),
}


def _guard_filter(func: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose numeric arguments and result are bounded (the piped value is not an argument)."""

    @functools.wraps(func)  # keeps jinja's pass_context / pass_environment marker
    def guarded(*args: Any, **kwargs: Any) -> Any:
        given = list(args)
        while given and isinstance(given[0], Context | EvalContext | Environment):
            given.pop(0)
        _check_numbers(given[1:])
        _check_numbers(kwargs.values())
        return _sized(func(*args, **kwargs))

    return guarded


class BoundedEnvironment(SandboxedEnvironment):
    """The sandbox with the bounds of this module."""

    intercepted_binops = frozenset(_BINOPS)

    def __init__(self, **options: Any) -> None:
        super().__init__(undefined=StrictUndefined, optimized=False, **options)
        self.globals["range"] = _bounded_range
        self.filters = {name: _guard_filter(func) for name, func in self.filters.items()}
        self.filters[_BOUNDED] = _bounded_iter

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, _BOUNDED, [], [], None, None, lineno=loop.lineno)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        return _BINOPS[operator](left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        _check_numbers(args)
        _check_numbers(kwargs.values())
        return _sized(super().call(__context, __obj, *args, **kwargs))


def bounded_render(template: Any, context: dict[str, Any]) -> str:
    """Render within a fresh `Budget`, stopping once the output passes ``MAX_OUTPUT_CHARS``."""
    token = _budget.set(Budget())
    try:
        size, chunks = 0, []
        for chunk in template.generate(**context):
            size += len(chunk)
            if size > MAX_OUTPUT_CHARS:
                raise TemplateTooCostly(f"output of more than {MAX_OUTPUT_CHARS:,} characters")
            chunks.append(chunk)
        return "".join(chunks)
    finally:
        _budget.reset(token)
