"""R's default contrasts for formulaic: treatment for unordered factors, orthogonal polynomials (contr.poly) for
ordered ones — what lme4's model.matrix gives (R's options("contrasts")). formulaic encodes every categorical
with treatment contrasts unless told; this materializer gives ordered pandas categoricals contr.poly, named as R
names them (x.L, x.Q, x.C, x^4, ...; see `_design.lme4_column_name`). An explicit C(x, ...) in the formula keeps
the contrasts it names."""

from __future__ import annotations

import pandas as pd
from interface_meta import override
from formulaic.materializers import PandasMaterializer
from formulaic.transforms.contrasts import PolyContrasts, encode_contrasts
from formulaic.utils.cast import as_columns
from formulaic.utils.null_handling import drop_rows as drop_nulls

__all__ = ["RContrastsMaterializer"]


def _is_ordered(values) -> bool:
    values = getattr(values, "__wrapped__", values)
    return isinstance(getattr(values, "dtype", None), pd.CategoricalDtype) and bool(values.dtype.ordered)


class RContrastsMaterializer(PandasMaterializer):
    REGISTER_NAME = "jaxmlm_r_contrasts"
    REGISTER_INPUTS = ()  # used only when asked for by name
    REGISTER_PRECEDENCE = 0

    @override
    def _encode_categorical(self, values, metadata, encoder_state, spec, drop_rows, reduced_rank=False):
        if not _is_ordered(values):
            return super()._encode_categorical(values, metadata, encoder_state, spec, drop_rows, reduced_rank)
        if drop_rows:
            values = drop_nulls(values, indices=drop_rows)
        return as_columns(
            encode_contrasts(values, PolyContrasts(), reduced_rank=reduced_rank, _metadata=metadata, _state=encoder_state,
                             _spec=spec)
        )
