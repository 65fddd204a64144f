"""``python -m fastloss info | bench | check`` (also the ``fastloss`` console script)."""
import sys

from fastloss._bench import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
