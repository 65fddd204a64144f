"""The examples in the public docstrings run and print what they say."""
import doctest

import pytest

import fastloss.losses.boxes
import fastloss.losses.overlap
import fastloss.losses.pairwise

#: the modules whose docstrings have examples so far (issue 6: every public loss)
MODULES = [fastloss.losses.overlap, fastloss.losses.boxes, fastloss.losses.pairwise]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
