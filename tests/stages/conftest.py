"""The stage tests use the VMC tests' tiny chain and the profiling tests' tiny model dirs."""

from ..profiling.conftest import model_dirs, tfim8  # noqa: F401
from ..vmc.conftest import chain, one_thread  # noqa: F401
