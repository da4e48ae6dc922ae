"""vaec: variational autoencoders with a pure-C core and a NumPy face."""
try:
    from ._core import cpu_features as _cpu_features
except ModuleNotFoundError as _e:  # a source tree whose C extension was never built in place
    if _e.name != f"{__name__}._core":
        raise
    import os as _os

    raise ImportError(
        f"vaec's C extension is not built in {_os.path.dirname(__file__)}: this is the source folder of "
        "a clone, found before any installed copy. Build it here with `pip install -e .`, or run from "
        "another folder (or use the `vaec` command) to use an installed copy."
    ) from None
from .models import VAE, Autoencoder, gradient_variance, load

__version__ = "0.1.0"
__all__ = ["VAE", "Autoencoder", "M2", "Flow", "gradient_variance", "load", "cpu_features", "__version__"]


def cpu_features():
    """The kernel path in use and what the CPU offers.

    Returns a dict: ``isa`` (the path the kernels run now: 'avx512', 'avx2', 'neon',
    'scalar' or 'naive'), ``best_isa`` (the best this CPU supports), ``features``
    (detected CPU features, comma-separated) and ``cores`` (cores available to this
    process). Set the environment variable ``VAEC_ISA`` before importing vaec to force
    a lower path.
    """
    return dict(_cpu_features())

from .m2 import M2  # noqa: E402
from .flows import Flow  # noqa: E402  (normalizing flows: vaec/flows.py)
