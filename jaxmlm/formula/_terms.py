"""Formula text → parsed terms, with R's grammar for the whole formula.

The formula is parsed once (``_parser``) into R's expression tree. The random-effect bars `(expr | group)`,
`(expr || group)` and glmmTMB's covariance spellings `us(expr | group)`, `diag(...)`, `cs(...)`, `ar1(...)` are
taken out of it as lme4's findbars does; what is left is the fixed part, whose terms follow R's formula algebra
(`+ - : * / ^ %in%`, `0`, `1`, `-1`: see `expand_terms`). Grouping expressions may use `/` (nesting: `a/b` is
`a + b:a`, named as lme4 names it), `:` (interaction) and `factor()`.

Nothing here touches data: the output is a ``ParsedFormula`` of strings in R's spelling (R's deparse), so syntax
errors surface before any column is read or anything is compiled.
"""

from __future__ import annotations

import dataclasses

from .._errors import FormulaError
from ._parser import BinOp, Call, Name, Node, Num, Paren, Unary, deparse, names_in, parse_expression, parse_tilde

__all__ = ["ParsedFormula", "RandomTerm", "Term", "parse_formula", "expression_names", "expand_terms",
           "COVARIANCE_STRUCTURES"]

# glmmTMB's spellings of a term's covariance structure; "us" (unstructured) is lme4's `(x | g)`
COVARIANCE_STRUCTURES = ("us", "diag", "cs", "ar1")
# calls in which `|` is R's logical or, as in I(x < 0 | x > 1), not a random-effects bar
_LOGICAL_OR_CALLS = ("I", "as.numeric", "as.integer", "as.double", "factor", "as.factor", "ordered")
_OTHER_GLMMTMB_STRUCTURES = ("toep", "ou", "exp", "gau", "mat", "rr", "homdiag", "homcs", "hetar1", "propto")


@dataclasses.dataclass(frozen=True)
class RandomTerm:
    """One random-effects term `(lhs | factors)`; `lhs` is R text for its model-matrix columns."""

    lhs: str
    factors: tuple[str, ...]  # the data columns whose interaction groups the term, in lme4's naming order
    text: str  # the bar as the user wrote it, for messages
    covariance: str = "us"  # "us" (lme4's default), "diag", "cs", "ar1" (glmmTMB's spellings)
    labels: tuple[str, ...] = ()  # the grouping factors as written, where that differs ("factor(g)")

    @property
    def group_name(self) -> str:
        return ":".join(self.labels or self.factors)


@dataclasses.dataclass(frozen=True)
class ParsedFormula:
    text: str
    response: str  # the left side, as written
    response_parts: tuple[str, ...]  # cbind(a, b) → ("a", "b"); otherwise (response,) — R text
    fixed: str  # R text of the fixed part: its intercept choice, then its terms (R's term labels, R's order)
    random: tuple[RandomTerm, ...]
    offsets: tuple[str, ...]  # expressions inside offset(...), R text
    renames: tuple[tuple[str, str], ...] = ()  # kept for callers that respell column names; R's spelling needs none
    fixed_intercept: bool = True
    fixed_terms: tuple["Term", ...] = ()  # the fixed part's terms in R's order (what `fixed` spells)

    @property
    def is_cbind(self) -> bool:
        return len(self.response_parts) == 2


# ---------------------------------------------------------------------------------------------- formula algebra
@dataclasses.dataclass(frozen=True)
class Term:
    """One model term: an interaction of variables (R text), in the order R numbers them (first appearance)."""

    variables: tuple[str, ...]

    @property
    def factors(self) -> frozenset[str]:
        return frozenset(self.variables)

    @property
    def order(self) -> int:
        return len(self.variables)

    def __str__(self) -> str:
        return ":".join(self.variables)


class _Algebra:
    """R's terms.formula (EncodeVars): terms as sets of variables, the intercept as a flag set in reading order."""

    def __init__(self, where: str):
        self.where = where
        self.variables: list[str] = []  # in order of first appearance: R's variable numbering
        self.intercept = True

    def variable(self, node: Node) -> list[frozenset]:
        label = deparse(node)
        if label not in self.variables:
            self.variables.append(label)
        return [frozenset([label])]

    def encode(self, node: Node) -> list[frozenset]:
        if isinstance(node, Num):
            if node.value in (0.0, 1.0):
                self.intercept = node.value == 1.0
                return []
            raise FormulaError(f"invalid model formula in {self.where}: the number {deparse(node)} is not a term "
                               "(only 0, 1 and -1 choose the intercept)")
        if isinstance(node, Paren):
            return self.encode(node.inner)
        if isinstance(node, Name) and node.id == ".":
            raise FormulaError(f"'.' in {self.where} stands for the other variables only in update()")
        if isinstance(node, Unary) and node.op in "+-":
            if node.op == "+":
                return self.encode(node.operand)
            self.delete(node.operand)  # R: a unary minus removes terms from nothing; `-1` drops the intercept
            return []
        if isinstance(node, BinOp) and node.op in ("+", "-", ":", "*", "/", "%in%", "^"):
            return self.binary(node)
        if isinstance(node, (BinOp, Unary)) and node.op in ("|", "||", "~"):
            raise FormulaError(f"random-effects term {deparse(node)!r} must be wrapped in parentheses: "
                               f"'({deparse(node)})'")
        return self.variable(node)

    def delete(self, node: Node) -> list[frozenset]:
        inner = node.inner if isinstance(node, Paren) else node
        if isinstance(inner, Num) and inner.value in (0.0, 1.0):
            self.intercept = inner.value == 0.0
            return []
        saved = self.intercept
        terms = self.encode(node)
        self.intercept = saved
        return terms

    def binary(self, node: BinOp) -> list[frozenset]:
        op = node.op
        if op == "-":
            left = self.encode(node.left)
            removed = set(self.delete(node.right))
            return [t for t in left if t not in removed]
        left = self.encode(node.left)
        if op == "^":
            power = node.right.inner if isinstance(node.right, Paren) else node.right
            if not isinstance(power, Num) or power.value < 1 or power.value != int(power.value):
                raise FormulaError(f"invalid power in {deparse(node)!r} ({self.where}): use a whole number >= 1")
            out = list(left)
            for _ in range(int(power.value) - 1):
                out = _unique(out + [a | b for a in out for b in left])
            return out
        right = self.encode(node.right)
        if op == "+":
            return _unique(left + right)
        if op == ":":
            return _unique([a | b for a in left for b in right])
        if op == "*":
            return _unique(left + right + [a | b for a in left for b in right])
        if op == "%in%":
            outer = frozenset().union(*right)
            return _unique([a | outer for a in left])
        outer = frozenset().union(*left)  # "/": a/b is a + b %in% a
        return _unique(left + [b | outer for b in right])


def _unique(terms: list[frozenset]) -> list[frozenset]:
    out: list[frozenset] = []
    for t in terms:
        if t and t not in out:
            out.append(t)
    return out


def expand_terms(node: Node | None, where: str) -> tuple[bool, list[Term]]:
    """(has intercept, terms) of a formula's right side, as R's terms(): duplicates removed, terms sorted by order
    (number of variables) keeping their order of appearance, each term's variables in order of first appearance."""
    algebra = _Algebra(where)
    terms = algebra.encode(node) if node is not None else []
    rank = {v: i for i, v in enumerate(algebra.variables)}
    out = [Term(tuple(sorted(t, key=rank.__getitem__))) for t in terms]
    out.sort(key=lambda t: t.order)
    return algebra.intercept, out


def terms_text(intercept: bool, terms: list[Term]) -> str:
    return " + ".join(["1" if intercept else "0"] + [str(t) for t in terms])


# ---------------------------------------------------------------------------------------------- bars (findbars)
def _plus_pieces(node: Node, sign: str = "+") -> list[tuple[str, Node]]:
    """The top-level `+`/`-` pieces of the right side, with their signs (parentheses without bars kept whole)."""
    if isinstance(node, BinOp) and node.op in "+-":
        return _plus_pieces(node.left, sign) + _plus_pieces(node.right, node.op if sign == "+" else "-")
    return [(sign, node)]


def _bar_of(node: Node) -> tuple[str, BinOp] | None:
    """A random-effects term: (covariance, the bar) for `(x | g)`, `(x || g)` or `cs(x | g)` etc.; else None."""
    if isinstance(node, Paren) and isinstance(node.inner, BinOp) and node.inner.op in ("|", "||"):
        return "us", node.inner
    if isinstance(node, Call) and len(node.args) == 1 and isinstance(node.args[0], BinOp) and node.args[0].op == "|" \
            and node.func not in _LOGICAL_OR_CALLS:
        if node.func in COVARIANCE_STRUCTURES:
            return node.func, node.args[0]
        if node.func in _OTHER_GLMMTMB_STRUCTURES:
            raise FormulaError(f"{node.func}() covariance structures are not supported in {deparse(node)!r}: "
                               f"jaxmlm reads {', '.join(f'{c}()' for c in COVARIANCE_STRUCTURES)}")
        raise FormulaError(f"unknown covariance structure {node.func}() in {deparse(node)!r}: "
                           f"use one of {', '.join(f'{c}()' for c in COVARIANCE_STRUCTURES)}")
    return None


def _has_bar(node: Node) -> bool:
    if isinstance(node, BinOp):
        return node.op in ("|", "||") or _has_bar(node.left) or _has_bar(node.right)
    if isinstance(node, Paren):
        return _has_bar(node.inner)
    if isinstance(node, Unary):
        return _has_bar(node.operand)
    if isinstance(node, Call):  # inside I(), log() etc. `|` is R's logical or; only the wrappers hold bars
        known = node.func in COVARIANCE_STRUCTURES + _OTHER_GLMMTMB_STRUCTURES
        return known and any(isinstance(a, BinOp) and a.op == "|" for a in node.args)
    return False


def _group_factor(node: Node, bar_text: str) -> tuple[str, str]:
    """(data column, label) of one grouping factor: a name, or factor()/as.factor() of a name."""
    inner = node.inner if isinstance(node, Paren) else node
    if isinstance(inner, Name):
        return inner.id, deparse(inner)
    if isinstance(inner, Call) and inner.func in ("factor", "as.factor") and len(inner.args) == 1 and isinstance(
            inner.args[0], Name):
        return inner.args[0].id, deparse(inner)
    raise FormulaError(f"grouping factor {deparse(node)!r} in {bar_text!r} must be a column name or factor(name) "
                       "(use a:b for interactions, a/b for nesting)")


def _interaction(node: Node, bar_text: str) -> list[tuple[str, str]]:
    if isinstance(node, BinOp) and node.op == ":":
        return _interaction(node.left, bar_text) + _interaction(node.right, bar_text)
    return [_group_factor(node, bar_text)]


def _group_factors(node: Node, bar_text: str) -> list[list[tuple[str, str]]]:
    """'a/b/c' → [c, b, a], [b, a], [a] (lme4's expandSlash: the innermost interaction first); 'a:b' → [a, b]."""
    node = node.inner if isinstance(node, Paren) and isinstance(node.inner, BinOp) and node.inner.op == "/" else node
    if isinstance(node, BinOp) and node.op == "/":
        outer_sets = _group_factors(node.left, bar_text)
        inner = _interaction(node.right, bar_text)
        return [inner + outer_sets[0]] + outer_sets
    return [_interaction(node, bar_text)]


def _random_terms(covariance: str, bar: BinOp, bar_text: str) -> list[RandomTerm]:
    """The terms of one bar in lme4's order: (x || g/h) is expandDoubleVerts' (1 | g/h) + (0 + x | g/h), each
    then expanded by expandSlash into (· | h:g) + (· | g)."""
    if _has_bar(bar.left) or _has_bar(bar.right):
        raise FormulaError(f"random-effects term {bar_text!r} has more than one bar")
    if bar.op == "|" and covariance != "diag":
        pieces, kind = [deparse(bar.left)], covariance
    else:  # (x || g) and diag(x | g) → (1 | g) + (0 + x | g) + ...: one term per left-side term, as lme4 expands it
        intercept, terms = expand_terms(bar.left, f"random-effects term {bar_text}")
        pieces, kind = ["1"] * intercept + [f"0 + {t}" for t in terms], "diag" if covariance == "diag" else "us"
    out: list[RandomTerm] = []
    for lhs in pieces:
        for factor_set in _group_factors(bar.right, bar_text):
            columns = tuple(c for c, _ in factor_set)
            labels = tuple(label for _, label in factor_set)
            out.append(RandomTerm(lhs, columns, bar_text, kind, labels if labels != columns else ()))
    return out


def _collect(node: Node, fixed: list[tuple[str, Node]], random: list[RandomTerm], offsets: list[Node]) -> None:
    for sign, piece in _plus_pieces(node):
        found = _bar_of(piece)
        if found is not None:
            covariance, bar = found
            text = deparse(piece)
            if sign == "-":
                raise FormulaError(f"cannot subtract a random-effects term: {text!r}")
            random.extend(_random_terms(covariance, bar, text))
            continue
        if isinstance(piece, Paren) and _has_bar(piece.inner) and isinstance(piece.inner, BinOp) \
                and piece.inner.op in "+-":
            _collect(piece.inner, fixed, random, offsets)  # a group of terms such as ((1|a) + (0 + x|a))
            continue
        if isinstance(piece, Call) and piece.func == "offset":
            if sign == "-":
                raise FormulaError("cannot subtract an offset; write offset(-expr)")
            if len(piece.args) != 1:
                raise FormulaError(f"offset() takes one expression, got {deparse(piece)!r}")
            offsets.append(piece.args[0])
            continue
        if _has_bar(piece):
            text = deparse(piece)
            raise FormulaError(f"random-effects term {text!r} must be wrapped in parentheses: '({text})'")
        fixed.append((sign, piece))


def _rejoin(pieces: list[tuple[str, Node]]) -> Node | None:
    node: Node | None = None
    for sign, piece in pieces:
        if node is None:
            node = piece if sign == "+" else Unary("-", piece)
        else:
            node = BinOp(sign, node, piece)
    return node


def _check_empty_bar_sides(text: str) -> None:
    """lme4's messages for `( | g)` and `(1 | )`, which R's grammar cannot even parse."""
    import re

    for m in re.finditer(r"\(\s*\|\|?[^()]*\)", text):
        raise FormulaError(f"random-effects term {m.group()!r} has nothing before the bar (use 1 for an intercept)")
    for m in re.finditer(r"\([^()]*\|\|?\s*\)", text):
        raise FormulaError(f"random-effects term {m.group()!r} has no grouping factor after the bar")


def _split_response(lhs: Node) -> tuple[str, ...]:
    if isinstance(lhs, Call) and lhs.func == "cbind":
        if len(lhs.args) != 2:
            raise FormulaError(f"cbind() in {deparse(lhs)!r} needs exactly two arguments: successes, failures")
        return deparse(lhs.args[0]), deparse(lhs.args[1])
    if _has_bar(lhs):
        raise FormulaError(f"the response {deparse(lhs)!r} cannot hold a random-effects bar")
    return (deparse(lhs),)


def _count_tildes(text: str) -> int:
    count, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "`'\"":
            quote = ch
        elif ch == "~":
            count += 1
    return count


def parse_formula(text: str) -> ParsedFormula:
    """Parse an lme4 formula. Raises FormulaError for anything malformed."""
    if not isinstance(text, str):
        raise FormulaError(f"formula must be a string such as 'y ~ x + (1 | g)', got {type(text).__name__}")
    if _count_tildes(text) != 1:
        raise FormulaError(f"formula {text!r} must have exactly one '~' with the response on its left")
    lhs_text, rhs_text = text.split("~") if text.count("~") == 1 else (None, None)
    if lhs_text is not None and not lhs_text.strip():
        raise FormulaError(f"formula {text!r} has no response on the left of '~'")
    if rhs_text is not None and not rhs_text.strip():
        raise FormulaError(f"formula {text!r} has nothing on the right of '~'")
    _check_empty_bar_sides(text)
    tree = parse_tilde(text)
    if not (isinstance(tree, BinOp) and tree.op == "~"):
        raise FormulaError(f"formula {text!r} has no response on the left of '~'")
    response_parts = _split_response(tree.left)

    fixed: list[tuple[str, Node]] = []
    random: list[RandomTerm] = []
    offsets: list[Node] = []
    _collect(tree.right, fixed, random, offsets)
    intercept, terms = expand_terms(_rejoin(fixed), "the fixed-effects part")
    return ParsedFormula(
        text=text,
        response=(lhs_text.strip() if lhs_text is not None else deparse(tree.left)),
        response_parts=response_parts,
        fixed=terms_text(intercept, terms),
        random=tuple(random),
        offsets=tuple(deparse(o) for o in offsets),
        fixed_intercept=intercept,
        fixed_terms=tuple(terms),
    )


def expression_names(expr: str) -> set[str]:
    """Variable names used in a formula expression (for checking them against the data's columns)."""
    if not expr.strip():
        return set()
    return names_in(parse_expression(expr))
