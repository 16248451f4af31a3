"""The one compiled piece, the connection table's hash map (lvs/_intmap.c).

Everything else is in pyproject.toml.  ``optional``: without a C compiler the
install goes on and the connection table uses a dict (lvs/conntab.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("lvs._intmap", ["lvs/_intmap.c"], optional=True)])
