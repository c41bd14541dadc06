"""R's expression grammar, as far as formulas use it: a tokenizer, a recursive-descent parser and R's deparse.

A formula is parsed once into a small tree of frozen nodes (`Name`, `Num`, `Str`, `Call`, `BinOp`, `Unary`,
`Paren`). The operators and their precedence are R's (?Syntax), lowest first:

    ~  |  ||  &  &&  !  comparisons  + -  * /  %any%  :  unary + -  ^ (right)

`**` is R's other spelling of `^`. Names are R's (`a.b`, `class`, `yield` are ordinary names; Python's keywords
mean nothing here), and any name may be written in backticks (`` `my col` ``). Nothing here is evaluated: the
tree is read by `_terms` (formula algebra) and `_modelmatrix` (evaluation on data).
"""

from __future__ import annotations

import dataclasses
import re

from .._errors import FormulaError

__all__ = ["Node", "Name", "Num", "Str", "Call", "BinOp", "Unary", "Paren", "parse_expression", "parse_tilde",
           "deparse", "names_in"]


class Node:
    """An R expression."""


@dataclasses.dataclass(frozen=True)
class Name(Node):
    id: str


@dataclasses.dataclass(frozen=True)
class Num(Node):
    value: float
    integer: bool = False  # written with R's L suffix


@dataclasses.dataclass(frozen=True)
class Str(Node):
    value: str


@dataclasses.dataclass(frozen=True)
class Call(Node):
    func: str
    args: tuple  # of Node
    keywords: tuple = ()  # per argument: its name or None


@dataclasses.dataclass(frozen=True)
class BinOp(Node):
    op: str
    left: Node
    right: Node


@dataclasses.dataclass(frozen=True)
class Unary(Node):
    op: str
    operand: Node


@dataclasses.dataclass(frozen=True)
class Paren(Node):
    inner: Node


_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?L?)
      | (?P<name>(?:[^\W\d]|\.(?!\d))[\w.]*)
      | (?P<bquote>`[^`]*`)
      | (?P<string>"[^"]*"|'[^']*')
      | (?P<special>%[^%\s]*%)
      | (?P<op>\*\*|\|\||&&|<=|>=|==|!=|[~+\-*/^:|&!<>(),=])
    """,
    re.VERBOSE,
)


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, position) tokens, ending with ('end', '', len(text))."""
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos] == "`":
                raise FormulaError(f"unbalanced backtick in formula text {text!r}")
            raise FormulaError(f"cannot parse formula text {text!r}: unexpected {text[pos]!r} at position {pos}")
        kind = m.lastgroup
        if kind != "space":
            value = m.group()
            if kind == "bquote":
                kind, value = "name", value[1:-1]
                if not value:
                    raise FormulaError(f"empty backticked name in formula text {text!r}")
            tokens.append((kind, "^" if value == "**" else value, pos))
        pos = m.end()
    tokens.append(("end", "", len(text)))
    return tokens


_RESERVED = {"if", "else", "repeat", "while", "function", "for", "next", "break", "TRUE", "FALSE", "NULL", "Inf",
             "NaN", "NA", "NA_integer_", "NA_real_", "NA_character_", "in"}
_CONSTANTS = {"TRUE", "FALSE", "Inf", "NaN", "NA", "T", "F", "pi"}


class _Parser:
    """Precedence climbing over R's operator table (one method per level)."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def at(self, *ops: str) -> bool:
        kind, value, _ = self.peek()
        return kind in ("op", "special") and value in ops

    def fail(self, what: str):
        kind, value, pos = self.peek()
        found = "the end" if kind == "end" else repr(value)
        opened = sum(1 for k, v, _ in self.tokens if k == "op" and v == "(")
        closed = sum(1 for k, v, _ in self.tokens if k == "op" and v == ")")
        if kind == "end" and opened > closed:
            raise FormulaError(f"unbalanced parentheses in formula text {self.text!r}")
        if value == ")" and closed > opened:
            raise FormulaError(f"unbalanced ')' in formula text {self.text!r}")
        hint = ""
        if kind == "name" and self.i > 0 and self.tokens[self.i - 1][0] == "name":
            hint = f" (a name with spaces or symbols needs R's backticks: `{self.tokens[self.i - 1][1]} {value}`)"
        raise FormulaError(f"cannot parse formula text {self.text!r}: expected {what}, found {found} at position "
                           f"{pos}{hint}")

    def binary_left(self, ops: tuple[str, ...], operand) -> Node:
        node = operand()
        while self.at(*ops):
            op = self.take()[1]
            node = BinOp(op, node, operand())
        return node

    def tilde(self) -> Node:
        if self.at("~"):
            self.take()
            return Unary("~", self.or_())
        left = self.or_()
        if self.at("~"):
            self.take()
            return BinOp("~", left, self.or_())
        return left

    def or_(self) -> Node:
        return self.binary_left(("|", "||"), self.and_)

    def and_(self) -> Node:
        return self.binary_left(("&", "&&"), self.not_)

    def not_(self) -> Node:
        if self.at("!"):
            self.take()
            return Unary("!", self.not_())
        return self.comparison()

    def comparison(self) -> Node:
        return self.binary_left(("<", ">", "<=", ">=", "==", "!="), self.additive)

    def additive(self) -> Node:
        return self.binary_left(("+", "-"), self.multiplicative)

    def multiplicative(self) -> Node:
        return self.binary_left(("*", "/"), self.special)

    def special(self) -> Node:
        node = self.colon()
        while self.peek()[0] == "special":
            op = self.take()[1]
            node = BinOp(op, node, self.colon())
        return node

    def colon(self) -> Node:
        return self.binary_left((":",), self.unary)

    def unary(self) -> Node:
        if self.at("-", "+"):
            op = self.take()[1]
            return Unary(op, self.unary())
        return self.power()

    def power(self) -> Node:
        base = self.postfix()
        if self.at("^"):
            self.take()
            return BinOp("^", base, self.unary())  # right-associative; R's exponent may carry a sign
        return base

    def postfix(self) -> Node:
        node = self.primary()
        while self.at("("):
            if not isinstance(node, Name):
                self.fail("an operator")
            node = self.call(node.id)
        return node

    def call(self, func: str) -> Call:
        self.take()  # "("
        args, keywords = [], []
        while not self.at(")"):
            kind, value, _ = self.peek()
            keyword = None
            if kind == "name" and self.tokens[self.i + 1][1] == "=" and self.tokens[self.i + 1][0] == "op":
                keyword = value
                self.i += 2
            args.append(self.tilde())
            keywords.append(keyword)
            if self.at(","):
                self.take()
            elif not self.at(")"):
                self.fail(f"',' or ')' in the arguments of {func}()")
        self.take()
        return Call(func, tuple(args), tuple(keywords))

    def primary(self) -> Node:
        kind, value, _ = self.peek()
        if kind == "name":
            self.take()
            return Name(value)
        if kind == "num":
            self.take()
            return Num(float(value.rstrip("L")), integer=value.endswith("L"))
        if kind == "string":
            self.take()
            return Str(value[1:-1])
        if self.at("("):
            self.take()
            inner = self.tilde()
            if not self.at(")"):
                if self.peek()[0] == "end":
                    raise FormulaError(f"unbalanced parentheses in formula text {self.text!r}")
                self.fail("')'")
            self.take()
            return Paren(inner)
        self.fail("a name, a number or '('")

    def finish(self, node: Node) -> Node:
        if self.peek()[0] != "end":
            self.fail("the end of the formula")
        return node


def parse_tilde(text: str) -> Node:
    """Parse a whole formula (`lhs ~ rhs` or `~ rhs`)."""
    parser = _Parser(text)
    return parser.finish(parser.tilde())


def parse_expression(text: str) -> Node:
    """Parse one R expression (no `~`)."""
    parser = _Parser(text)
    if parser.peek()[0] == "end":
        raise FormulaError("empty expression in formula")
    return parser.finish(parser.or_())


_SYNTACTIC = re.compile(r"^(?:(?:[^\W\d_]|\.(?![\d]))[\w.]*|\.)$")


def deparse_name(name: str) -> str:
    """A name as R prints it: backticked unless syntactic (`a.b`, `class` need none; `a b`, `_x`, `if` do)."""
    return name if _SYNTACTIC.match(name) and name not in _RESERVED else f"`{name}`"


def _number(node: Num) -> str:
    """A number as R's deparse writes it: 15 significant digits, scientific notation when that is no wider."""
    if node.integer:
        return f"{int(node.value)}L"
    v = node.value
    fixed = f"{v:.15g}"
    if "e" in fixed:
        fixed = f"{v:.15f}".rstrip("0").rstrip(".")
    sci = f"{v:.14e}"
    mantissa, exponent = sci.split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    sci = f"{mantissa}e{exponent[0]}{int(exponent[1:]):02d}"
    return fixed if len(fixed) <= len(sci) else sci


_SPACED = {"~", "|", "||", "&", "&&", "<", ">", "<=", ">=", "==", "!=", "+", "-", "*"}


def deparse(node: Node) -> str:
    """The expression as R's deparse() prints it (column names and term labels are built from this)."""
    if isinstance(node, Name):
        return deparse_name(node.id)
    if isinstance(node, Num):
        return _number(node)
    if isinstance(node, Str):
        return '"' + node.value + '"'
    if isinstance(node, Paren):
        return f"({deparse(node.inner)})"
    if isinstance(node, Unary):
        if node.op == "~":
            return f"~{deparse(node.operand)}"
        return f"{node.op}{deparse(node.operand)}"
    if isinstance(node, BinOp):
        if node.op in _SPACED or node.op.startswith("%"):
            return f"{deparse(node.left)} {node.op} {deparse(node.right)}"
        return f"{deparse(node.left)}{node.op}{deparse(node.right)}"
    if isinstance(node, Call):
        keywords = node.keywords or (None,) * len(node.args)
        args = [(f"{k} = " if k else "") + deparse(a) for a, k in zip(node.args, keywords)]
        return f"{deparse_name(node.func)}({', '.join(args)})"
    raise TypeError(f"not an expression node: {node!r}")


def names_in(node: Node) -> set[str]:
    """The variable names an expression reads (function names and R's constants excluded)."""
    if isinstance(node, Name):
        return set() if node.id in _CONSTANTS else {node.id}
    if isinstance(node, Paren):
        return names_in(node.inner)
    if isinstance(node, Unary):
        return names_in(node.operand)
    if isinstance(node, BinOp):
        return names_in(node.left) | names_in(node.right)
    if isinstance(node, Call):
        args = node.args[:1] if node.func == "C" else node.args  # C(f, contr.sum): the second names contrasts
        return set().union(*(names_in(a) for a in args)) if args else set()
    return set()
