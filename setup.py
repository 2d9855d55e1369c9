"""The optional C extensions (rainstorm.native); everything else is in pyproject.toml."""

from setuptools import Extension, setup


def native(name: str) -> Extension:
    return Extension(f"rainstorm.native.{name}", [f"rainstorm/native/{name}.c"],
                     depends=["rainstorm/native/columnar.h"], optional=True,
                     extra_compile_args=["-O2"])


setup(ext_modules=[native("_columns"), native("_words"), native("_pairs")])
