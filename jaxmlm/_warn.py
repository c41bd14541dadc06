"""Warnings that point at the user's line: the stack level of the first frame outside the jaxmlm package."""

from __future__ import annotations

import os
import sys

# lme4's "see help('isSingular')" becomes a pointer to jaxmlm's own page
SINGULAR_NOTE = "boundary (singular) fit: see 'Singular fits' in jaxmlm's docs/errors.md (lme4's help('isSingular'))"

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The `stacklevel` for a `warnings.warn` called by the caller of this function such that the warning names
    the first frame outside jaxmlm (the user's line), however deep inside jaxmlm the warning is raised.

        warnings.warn(message, SomeWarning, stacklevel=user_stacklevel())
    """
    frame = sys._getframe(1)  # the function that calls warnings.warn: stack level 1
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level
