"""Only what pyproject.toml cannot say: a wheel that carries libgoxelpool (``make wheel`` copies
it into goxelpool/) holds native code, so it is tagged for the platform (py3-none-linux_x86_64,
then manylinux by auditwheel) and not "any"; the Python side stays ABI-independent (ctypes)."""
import glob
import os

from setuptools import Distribution, setup

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
CARRIES_LIBRARY = bool(glob.glob(os.path.join(HERE, "goxelpool", "libgoxelpool.so.*")))


class LibraryDistribution(Distribution):
    """With the library inside, files go to platlib (where auditwheel repairs them)."""

    def has_ext_modules(self) -> bool:
        return CARRIES_LIBRARY


class PlatformWheel(bdist_wheel):
    def get_tag(self):  # type: ignore[no-untyped-def]
        python, abi, platform = super().get_tag()
        return ("py3", "none", platform) if CARRIES_LIBRARY else (python, abi, platform)


setup(distclass=LibraryDistribution, cmdclass={"bdist_wheel": PlatformWheel})
