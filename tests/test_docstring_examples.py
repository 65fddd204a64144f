"""The examples in the public docstrings run and print what they say, and every
public function of a loss module has one."""
import doctest
import inspect

import pytest

import fastloss.losses.boxes
import fastloss.losses.elementwise
import fastloss.losses.multiclass
import fastloss.losses.overlap
import fastloss.losses.pairwise

MODULES = [fastloss.losses.elementwise, fastloss.losses.multiclass, fastloss.losses.overlap,
           fastloss.losses.boxes, fastloss.losses.pairwise]


def _short(module):
    return module.__name__.rsplit(".", 1)[-1]


def _public_functions(module):
    """The functions in ``__all__`` (the losses, as the wrappers their decorators
    made with functools.wraps; not the tables such as ELEMENTWISE_LOSSES)."""
    return [name for name in module.__all__ if inspect.isfunction(getattr(module, name))]


@pytest.mark.parametrize("module", MODULES, ids=_short)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def _function_cases():
    for module in MODULES:
        for name in _public_functions(module):
            yield pytest.param(module, name, id=f"{_short(module)}.{name}")


@pytest.mark.parametrize("module, name", list(_function_cases()))
def test_every_public_function_has_an_example(module, name):
    # what doctest.testmod runs: the finder must see the example through the wrapper
    examples = {test.name: len(test.examples) for test in doctest.DocTestFinder().find(module)}
    assert examples.get(f"{module.__name__}.{name}", 0) > 0, \
        f"{module.__name__}.{name}: its docstring has no doctest example (>>> lines)"


def test_every_public_loss_is_covered():
    """Every function fastloss exports from a loss module is in one of MODULES."""
    covered = {name for module in MODULES for name in _public_functions(module)}
    losses = {name for name in fastloss.__all__
              if inspect.isfunction(getattr(fastloss, name))
              and getattr(fastloss, name).__module__.startswith("fastloss.losses.")}
    assert losses and losses <= covered
