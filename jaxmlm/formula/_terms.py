"""Formula text → parsed terms.

jaxmlm reads lme4's formula language. The random-effect bars `(expr | group)` and `(expr || group)` are parsed
here; everything else (the fixed part and each bar's left side) is ordinary formula text that formulaic turns
into model matrices later (see ``_design.py``). Grouping expressions may use `/` (nesting: `a/b` is `a + b:a`,
named as lme4 names it) and `:` (interaction).

Nothing here touches data: the output is a ``ParsedFormula`` of strings, so syntax errors surface before any
column is read or anything is compiled.
"""

from __future__ import annotations

import ast
import dataclasses
import re

from .._errors import FormulaError

__all__ = ["ParsedFormula", "RandomTerm", "parse_formula", "expression_names"]


@dataclasses.dataclass(frozen=True)
class RandomTerm:
    """One random-effects term `(lhs | factors)`; `lhs` is formulaic text for its model-matrix columns."""

    lhs: str
    factors: tuple[str, ...]  # interaction of these grouping variables, in lme4's naming order
    text: str  # the bar as the user wrote it, for messages

    @property
    def group_name(self) -> str:
        return ":".join(self.factors)


@dataclasses.dataclass(frozen=True)
class ParsedFormula:
    text: str
    response: str  # the left side, as written
    response_parts: tuple[str, ...]  # cbind(a, b) → ("a", "b"); otherwise (response,)
    fixed: str  # formulaic right-hand side for X (always states its intercept choice)
    random: tuple[RandomTerm, ...]
    offsets: tuple[str, ...]  # expressions inside offset(...)
    renames: tuple[tuple[str, str], ...]  # formulaic column name → name as the user wrote it (R-style I(x^2))

    @property
    def is_cbind(self) -> bool:
        return len(self.response_parts) == 2


def _split_top(text: str, seps: str) -> list[tuple[str, str]]:
    """Split at top-level (outside parentheses/brackets/quotes) separators; returns (separator_before, piece)."""
    pieces: list[tuple[str, str]] = []
    depth = 0
    quote = ""
    start = 0
    sep_before = "+"
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise FormulaError(f"unbalanced ')' in formula text {text!r}")
        elif depth == 0 and ch in seps:
            # '-' right after an operator or '(' is a unary minus (e.g. "x + -1"), and '**' is a power
            if ch == "-" and not text[start:i].strip():
                continue
            pieces.append((sep_before, text[start:i]))
            sep_before = ch
            start = i + 1
    if depth != 0 or quote:
        raise FormulaError(f"unbalanced parentheses or quotes in formula text {text!r}")
    pieces.append((sep_before, text[start:]))
    return pieces


def _find_bar(text: str) -> tuple[int, int] | None:
    """Position and width of the top-level '|' or '||' in text, or None."""
    depth = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            width = 2 if text[i : i + 2] == "||" else 1
            return i, width
        i += 1
    return None


def _strip_parens(piece: str) -> str | None:
    """If piece is one parenthesized group '( ... )', return its inside; else None."""
    s = piece.strip()
    if not (s.startswith("(") and s.endswith(")")):
        return None
    depth = 0
    for i, ch in enumerate(s):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0 and i != len(s) - 1:
                return None
    return s[1:-1]


_IDENT = re.compile(r"^[A-Za-z_.][A-Za-z0-9_.]*$|^`[^`]+`$")


def _group_factors(group: str, bar_text: str) -> list[tuple[str, ...]]:
    """'a/b/c' → [(a,), (b, a), (c, b, a)] (lme4's expandSlash naming); 'a:b' → [(a, b)]."""
    group = group.strip()
    if not group:
        raise FormulaError(f"random-effects term {bar_text!r} has no grouping factor after the bar")
    nest = [g.strip() for g in group.split("/")]
    out: list[tuple[str, ...]] = []
    outer: tuple[str, ...] = ()
    for level in nest:
        names = tuple(n.strip().strip("`") for n in level.split(":"))
        for n in names:
            if not n or not _IDENT.match(n) and not n.replace(" ", "").isidentifier():
                raise FormulaError(
                    f"grouping factor {n!r} in {bar_text!r} must be a column name (use a:b for interactions, "
                    "a/b for nesting)"
                )
        current = names + outer
        out.append(current)
        outer = current
    return out


def _lhs_terms(lhs: str) -> tuple[bool, list[str]]:
    """Split a bar's left side into (has_intercept, [other term texts]) for the '||' expansion."""
    intercept = True
    terms: list[str] = []
    for sign, piece in _split_top(lhs, "+-"):
        p = piece.strip()
        if not p:
            continue
        if p in ("0", "-1") or (sign == "-" and p == "1"):
            intercept = False
        elif p == "1":
            intercept = sign != "-"
        elif sign == "-":
            raise FormulaError(f"cannot remove {p!r} inside random-effects term '({lhs} || ...)'")
        else:
            terms.append(p)
    return intercept, terms


def _normalise_lhs(lhs: str, bar_text: str) -> str:
    lhs = lhs.strip()
    if not lhs:
        raise FormulaError(f"random-effects term {bar_text!r} has nothing before the bar (use 1 for an intercept)")
    return lhs


def _parse_bar(inside: str) -> list[RandomTerm]:
    pos, width = _find_bar(inside)  # type: ignore[misc]
    lhs, group = inside[:pos], inside[pos + width :]
    bar_text = f"({inside.strip()})"
    if "|" in group:
        raise FormulaError(f"random-effects term {bar_text!r} has more than one bar")
    lhs = _normalise_lhs(lhs, bar_text)
    factor_sets = _group_factors(group, bar_text)
    out: list[RandomTerm] = []
    for factors in factor_sets:
        if width == 1:
            out.append(RandomTerm(lhs=lhs, factors=factors, text=bar_text))
        else:  # (x || g) → (1 | g) + (0 + x | g) + ...: one term per left-side term, as lme4 expands it
            intercept, terms = _lhs_terms(lhs)
            if intercept:
                out.append(RandomTerm(lhs="1", factors=factors, text=bar_text))
            for t in terms:
                out.append(RandomTerm(lhs=f"0 + {t}", factors=factors, text=bar_text))
    return out


def _collect(rhs: str, fixed: list[tuple[str, str]], random: list[RandomTerm], offsets: list[str]) -> None:
    for sign, piece in _split_top(rhs, "+-"):
        p = piece.strip()
        if not p:
            if sign == "-":
                raise FormulaError(f"dangling '-' in formula text {rhs!r}")
            continue
        inside = _strip_parens(p)
        if inside is not None and _find_bar(inside) is not None:
            if sign == "-":
                raise FormulaError(f"cannot subtract a random-effects term: {p!r}")
            random.extend(_parse_bar(inside))
            continue
        if inside is not None and "|" in inside:  # a group of terms such as ((1|a) + (0 + x|a))
            _collect(inside, fixed, random, offsets)
            continue
        if "|" in p:
            raise FormulaError(f"random-effects term {p!r} must be wrapped in parentheses: '({p})'")
        m = re.fullmatch(r"offset\((.*)\)", p, flags=re.S)
        if m:
            if sign == "-":
                raise FormulaError("cannot subtract an offset; write offset(-expr)")
            offsets.append(m.group(1).strip())
            continue
        fixed.append((sign, p))


def _r_to_python(expr: str) -> str:
    """R arithmetic inside I(...) and offset(...) → Python: `^` is power in R."""
    return expr.replace("^", "**")


def _translate_I_terms(fixed_text: str) -> tuple[str, list[tuple[str, str]]]:
    """Rewrite I(x^2) as I(x**2) for formulaic, remembering how to name the column as the user wrote it."""
    renames: list[tuple[str, str]] = []
    out = []
    i = 0
    while i < len(fixed_text):
        m = re.compile(r"(?<![A-Za-z0-9_.])I\(").search(fixed_text, i)
        if not m:
            out.append(fixed_text[i:])
            break
        out.append(fixed_text[i : m.start()])
        depth = 0
        j = m.end() - 1
        for j in range(m.end() - 1, len(fixed_text)):
            if fixed_text[j] == "(":
                depth += 1
            elif fixed_text[j] == ")":
                depth -= 1
                if depth == 0:
                    break
        original = fixed_text[m.start() : j + 1]
        inner = fixed_text[m.end() : j]
        translated = f"I({_r_to_python(inner)})"
        if translated != original:
            renames.append((translated, original))
        out.append(translated)
        i = j + 1
    return "".join(out), renames


def parse_formula(text: str) -> ParsedFormula:
    """Parse an lme4 formula. Raises FormulaError for anything malformed."""
    if not isinstance(text, str):
        raise FormulaError(f"formula must be a string such as 'y ~ x + (1 | g)', got {type(text).__name__}")
    tilde = [i for i, _ in enumerate(text) if text[i] == "~"]
    if len(tilde) != 1:
        raise FormulaError(f"formula {text!r} must have exactly one '~' with the response on its left")
    lhs, rhs = text.split("~")
    lhs = lhs.strip()
    if not lhs:
        raise FormulaError(f"formula {text!r} has no response on the left of '~'")
    if not rhs.strip():
        raise FormulaError(f"formula {text!r} has nothing on the right of '~'")
    m = re.fullmatch(r"cbind\((.*)\)", lhs, flags=re.S)
    if m:
        parts = [p.strip() for s, p in _split_top(m.group(1), ",")]
        if len(parts) != 2 or not all(parts):
            raise FormulaError(f"cbind() in {lhs!r} needs exactly two arguments: successes, failures")
        response_parts = (parts[0], parts[1])
    else:
        response_parts = (lhs,)

    fixed: list[tuple[str, str]] = []
    random: list[RandomTerm] = []
    offsets: list[str] = []
    _collect(rhs, fixed, random, offsets)

    intercept = True
    kept: list[tuple[str, str]] = []
    for sign, p in fixed:
        if p == "0" or (p == "1" and sign == "-"):
            intercept = False
        elif p == "1":
            intercept = True
        else:
            kept.append((sign, p))
    body = " ".join(f"{s} {p}" for s, p in kept).strip()
    if body.startswith("+"):
        body = body[1:].strip()
    fixed_text = ("1" if intercept else "0") + (f" + {body}" if body and not body.startswith("-") else f" {body}")
    fixed_text, renames = _translate_I_terms(fixed_text.strip())
    offsets = [_r_to_python(o) for o in offsets]

    for part in response_parts:
        expression_names(part)  # syntax check
    for term in random:
        expression_names(term.lhs)
    expression_names(fixed_text)
    for o in offsets:
        expression_names(o)
    return ParsedFormula(
        text=text,
        response=lhs,
        response_parts=response_parts,
        fixed=fixed_text,
        random=tuple(random),
        offsets=tuple(offsets),
        renames=tuple(renames),
    )


_BUILTINS = {"I", "C", "Q", "log", "exp", "sqrt", "abs", "np", "numpy", "center", "scale", "poly", "bs", "cr",
             "log10", "log2", "log1p", "sin", "cos", "lag", "T", "Treatment", "Sum", "Helmert", "Diff", "Poly",
             "contr", "standardize", "pi", "True", "False", "None", "factor", "pd", "math"}


def expression_names(expr: str) -> set[str]:
    """Variable names used in a formula expression (for checking them against the data's columns)."""
    code = expr.replace(":", "*").replace("%in%", "*")
    code = re.sub(r"`([^`]+)`", lambda m: "__bt_" + re.sub(r"\W", "_", m.group(1)), code)
    try:
        tree = ast.parse(code.strip() or "0", mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"cannot parse formula expression {expr!r}: {exc.msg}") from None
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    attr_base = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and id(node) not in called and id(node) not in attr_base:
            if node.id not in _BUILTINS:
                names.add(node.id)
    for m in re.finditer(r"`([^`]+)`", expr):
        names.add(m.group(1))
    return {n for n in names if not n.startswith("__bt_")}
