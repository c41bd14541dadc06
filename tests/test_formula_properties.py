"""Properties of the formula language, drawn by hypothesis (no fits: designs only, so each example is cheap).

- R's deparse is a fixed point of parsing: parse(deparse(parse(text))) prints the same.
- Every construct means the same in every position: an expression as a fixed-effects term and as a
  random-effects predictor gives the same columns (lme4 builds Z's columns with model.matrix(~ expr)).
- Names are opaque: renaming the data's columns to names that are Python keywords, dotted, or need R's backticks
  changes the column names accordingly and nothing else.
- R's formula algebra: a*b = a + b + a:b, (a + b)^2 = a*b, a %in% b = a:b, a/b = a + a:b, `**` = `^`, and the
  three spellings of "no intercept" agree.
- Grouping: (1 | a/b) is (1 | b:a) + (1 | a), and a:b's levels are the pairs present.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxmlm as jm
from jaxmlm.formula._design import build_design
from jaxmlm.formula._family import get_family
from jaxmlm.formula._terms import parse_formula
from jaxmlm.formula._parser import deparse, deparse_name, parse_expression, parse_tilde

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_rng = np.random.default_rng(17)
N = 40
DATA = pd.DataFrame({
    "y": _rng.normal(size=N),
    "x": _rng.uniform(0.5, 2.0, N).round(3),
    "z": _rng.normal(size=N).round(3),
    "t": _rng.integers(0, 4, N),
    "a": pd.Categorical(_rng.choice(["p", "q", "r"], N)),
    "b": pd.Categorical(_rng.choice(["u", "v"], N)),
    "g": pd.Categorical([f"g{i % 5}" for i in range(N)]),
    "h": pd.Categorical([f"h{i % 4}" for i in range(N)]),
})

# atoms: a column or an R expression of columns, in R's spelling
ATOMS = ["x", "z", "t", "a", "b", "I(t^2)", "I(t**2 - x)", "log(x)", "exp(-z/2)", "factor(t)", "I(x > 1)",
         "sqrt(x)", "poly(x, 2)", "I((t + 1)^-1)", "scale(z)", "C(a, sum)", 'relevel(a, "r")', "C(b, helmert)"]


def _expression(draw_atoms, ops):
    text = draw_atoms[0]
    for atom, op in zip(draw_atoms[1:], ops):
        text = f"{text} {op} {atom}" if op != ":" else f"{text}:{atom}"
    return text


expressions = st.builds(
    lambda atoms, ops: _expression(atoms, ops),
    st.lists(st.sampled_from(ATOMS), min_size=1, max_size=3, unique=True),
    st.lists(st.sampled_from(["+", "*", ":"]), min_size=2, max_size=2),
)


def _design(formula: str, data: pd.DataFrame = DATA):
    """The design alone (without lme4's linear-model checks on the number of random effects)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jm.RankDeficiencyWarning)
        return build_design(parse_formula(formula), data, family=get_family("gaussian", None))


@SETTINGS
@given(expressions, st.sampled_from(["", "0 + ", "-1 + "]), st.booleans())
def test_deparse_is_a_fixed_point_of_parsing(expr, intercept, parenthesize):
    body = f"({expr})" if parenthesize else expr
    text = f"y ~ {intercept}{body} + (1 | g)"
    printed = deparse(parse_tilde(text))
    assert deparse(parse_tilde(printed)) == printed
    assert parse_tilde(printed) == parse_tilde(text.replace("**", "^"))


@SETTINGS
@given(expressions)
def test_an_expression_means_the_same_in_the_fixed_part_and_as_a_random_effects_predictor(expr):
    design = _design(f"y ~ {expr} + ({expr} | g)")
    (term,) = design.terms
    assert term.column_names == design.x_names_all
    fixed_all = design.x_spec.get_model_matrix(DATA).to_numpy()
    np.testing.assert_array_equal(term.z, fixed_all)


KEYWORD_NAMES = ["yield", "class", "lambda", "a.b", "x.1", "my var", "if", "None", "def", "2nd"]


@SETTINGS
@given(expressions, st.permutations(KEYWORD_NAMES), st.booleans())
def test_column_names_are_opaque(expr, new_names, backtick_all):
    """Rename y, x, z, t, a, b, g to keywords, dotted names and names R must backtick: the same design."""
    old = ["y", "x", "z", "t", "a", "b", "g"]
    mapping = dict(zip(old, new_names))
    spelled = {o: (f"`{n}`" if backtick_all else deparse_name(n)) for o, n in mapping.items()}
    renamed = DATA.rename(columns=mapping)

    def respell(text: str) -> str:
        node = parse_expression(text)
        return deparse(_rename(node, spelled))

    formula = f"{respell('y')} ~ {respell(expr)} + ({respell(expr)} | {respell('g')})"
    base, other = _design(f"y ~ {expr} + ({expr} | g)"), _design(formula, renamed)
    printed = {o: deparse_name(n) for o, n in mapping.items()}
    assert other.x_names_all == _respelled_columns(base.x_spec, printed)
    assert other.terms[0].column_names == _respelled_columns(base.terms[0].z_spec, printed)
    np.testing.assert_array_equal(other.X, base.X)
    np.testing.assert_array_equal(other.y, base.y)
    np.testing.assert_array_equal(other.terms[0].z, base.terms[0].z)
    assert list(other.terms[0].levels) == list(base.terms[0].levels)
    assert other.terms[0].group_name == printed["g"]


def _rename(node, names: dict):
    """The expression with its variables renamed (names: old → new R spelling)."""
    from jaxmlm.formula import _parser as p

    if isinstance(node, p.Name):
        return p.Name(parse_expression(names[node.id]).id) if node.id in names else node
    if isinstance(node, p.Paren):
        return p.Paren(_rename(node.inner, names))
    if isinstance(node, p.Unary):
        return p.Unary(node.op, _rename(node.operand, names))
    if isinstance(node, p.BinOp):
        return p.BinOp(node.op, _rename(node.left, names), _rename(node.right, names))
    if isinstance(node, p.Call):
        return p.Call(node.func, tuple(_rename(a, names) for a in node.args), node.keywords)
    return node


def _respelled_columns(spec, printed: dict) -> list[str]:
    """A spec's column names with the variables renamed: each ':' piece of a term's column is one variable's
    label (in the term's order) with a level or column suffix glued on ('ap', 'poly(x, 2)1')."""
    names = ["(Intercept)"] if spec.intercept else []
    for term, indices in spec.term_indices.items():
        for j in indices:
            pieces = spec.column_names[j].split(":")
            assert len(pieces) == len(term.variables)
            names.append(":".join(deparse(_rename(parse_expression(v), printed)) + piece[len(v):]
                                  for v, piece in zip(term.variables, pieces)))
    return names


PAIRS = [
    ("{A} * {B}", "{A} + {B} + {A}:{B}"),
    ("({A} + {B})^2", "{A} * {B}"),
    ("({A} + {B})**2", "({A} + {B})^2"),
    ("{A} %in% {B}", "{A}:{B}"),
    ("{A}/{B}", "{A} + {A}:{B}"),
    ("{A} * {B} - {A}:{B}", "{A} + {B}"),
    ("0 + {A} + {B}", "{A} + {B} - 1"),
    ("-1 + {A} + {B}", "{A} + {B} + 0"),
    ("{A} + {A}:{B} + {A}", "{A} + {A}:{B}"),
    ("(({A})) + {B}", "{A} + {B}"),
]


@SETTINGS
@given(st.sampled_from(PAIRS), st.sampled_from(ATOMS), st.sampled_from(ATOMS))
def test_r_formula_algebra_identities(pair, first, second):
    if first == second:
        second = "z" if first != "z" else "x"
    left, right = (p.format(A=first, B=second) for p in pair)
    one, two = _design(f"y ~ {left} + (1 | g)"), _design(f"y ~ {right} + (1 | g)")
    assert one.x_names_all == two.x_names_all
    np.testing.assert_array_equal(one.x_spec.get_model_matrix(DATA).to_numpy(),
                                  two.x_spec.get_model_matrix(DATA).to_numpy())


@SETTINGS
@given(st.sampled_from(["a", "b", "g", "h", "factor(t)"]), st.sampled_from(["a", "b", "g", "h", "factor(t)"]))
def test_nested_grouping_is_the_outer_factor_plus_the_interaction(outer, inner):
    if outer == inner:
        return
    nested = _design(f"y ~ x + (1 | {outer}/{inner})")
    explicit = _design(f"y ~ x + (1 | {inner}:{outer}) + (1 | {outer})")  # lme4's expandSlash: inner first
    assert [t.group_name for t in nested.terms] == [t.group_name for t in explicit.terms]
    for one, two in zip(nested.terms, explicit.terms):
        np.testing.assert_array_equal(one.codes, two.codes)
        assert list(one.levels) == list(two.levels)
    (pairs_term,) = [t for t in explicit.terms if ":" in t.group_name]
    columns = [DATA[c.replace("factor(", "").rstrip(")")].astype(str) for c in (inner, outer)]
    present = sorted({f"{u}:{v}" for u, v in zip(*columns)})
    assert sorted(pairs_term.levels) == present


@pytest.mark.parametrize("formula", ["y ~ x + (y | g)", "log(y + 5) ~ x + (0 + y | g)", "y ~ x + diag(y + x | g)"])
def test_the_response_as_a_random_effects_predictor_warns(formula):
    with pytest.warns(jm.FormulaWarning, match="'y'"):
        jm.Model(formula, DATA)


@pytest.mark.parametrize("formula, words", [
    ("y ~ x + ar1(0 + factor(t) + x | g)", ["ar1()", "one factor", "ar1(0 + factor(t) + x | g)"]),
    ("y ~ x + ar1(factor(t) | g)", ["ar1()", "intercept", "ar1(0 + factor(t) | g)"]),
    ("y ~ x + ar1(0 + x | g)", ["ar1()", "'x'", "needs a factor"]),
    ("y ~ x + toep(x | g)", ["toep()", "not supported"]),
    ("y ~ x + foo(x | g)", ["unknown covariance structure", "foo()"]),
    ("y ~ x + (x | g/h/)", ["cannot parse"]),
    ("y ~ x + (1 | log(g))", ["grouping factor", "log(g)"]),
    ("y ~ 3 + x + (1 | g)", ["invalid model formula", "3"]),
    ("y ~ x^2 + (1 | g)", []),  # legal in R: x^2 is the term x
    ("y ~ foo(x) + (1 | g)", ["foo()", "not one jaxmlm evaluates"]),
    ("y ~ a + (1 | g) + (x | `no such`)", ["'no such'"]),
    ("y ~ my var + (1 | g)", ["cannot parse", "backticks", "`my var`"]),
])
def test_formula_errors_name_the_term(formula, words):
    if not words:
        assert _design(formula).x_names == ["(Intercept)", "x"]
        return
    with pytest.raises(jm.FormulaError) as info:
        jm.Model(formula, DATA)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_backticked_keyword_names_as_response_and_predictors():
    data = DATA.rename(columns={"y": "yield", "x": "class", "a": "lambda", "g": "def"})
    fixed = _design("`yield` ~ `class` * lambda + (`class` | def)", data)
    plain = _design("yield ~ class * lambda + (class | def)", data)  # R needs no backticks for these names
    assert fixed.x_names == ["(Intercept)", "class", "lambdaq", "lambdar", "class:lambdaq", "class:lambdar"]
    np.testing.assert_array_equal(fixed.X, plain.X)
    np.testing.assert_array_equal(fixed.y, DATA["y"].to_numpy())
    assert fixed.terms[0].group_name == "def" and fixed.terms[0].column_names == ["(Intercept)", "class"]


def test_a_bar_inside_I_is_rs_logical_or():
    design = _design("y ~ I(x < 0.8 | x > 1.5) + (I(z > 0 & t > 1) | g)")
    assert design.x_names == ["(Intercept)", "I(x < 0.8 | x > 1.5)TRUE"]
    np.testing.assert_array_equal(design.X[:, 1], ((DATA.x < 0.8) | (DATA.x > 1.5)).to_numpy())
    assert design.terms[0].column_names == ["(Intercept)", "I(z > 0 & t > 1)TRUE"]
    np.testing.assert_array_equal(design.terms[0].z[:, 1], ((DATA.z > 0) & (DATA.t > 1)).to_numpy())
