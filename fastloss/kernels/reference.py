"""backend="numpy": the float64 NumPy reference (:mod:`fastloss.reference`).

The loss layer calls the reference functions directly with the public
arguments, so this module only tells the dispatcher that it is always there.
"""


def unavailable_reason():
    return None
