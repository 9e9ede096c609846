"""``make native``: compile the given modules with mypyc, in place beside their sources.

    python build_native.py operators/candles.py operators/state.py ...

The modules form one group whose shared library is ``operators/native__mypyc.*.so``, inside
a package (mypyc's default name is a top-level module, which the editable install's import
hook cannot find from outside the checkout). See the Makefile for what is compiled and why.
"""

from __future__ import annotations

import sys

from mypyc.build import mypycify
from setuptools import setup

if __name__ == "__main__":
    setup(
        name="ticktape-native",
        ext_modules=mypycify(sys.argv[1:], group_name="operators.native", opt_level="3"),
        script_args=["build_ext", "--inplace"],
    )
