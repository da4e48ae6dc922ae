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
__all__ = ["VAE", "Autoencoder", "M2", "Flow", "gradient_variance", "load", "cpu_features", "set_sparse_input",
           "to_torch", "layers", "__version__"]


def cpu_features():
    """The kernel path in use and what the CPU offers.

    Returns a dict: ``isa`` (the path the kernels run now: 'avx512', 'avx2', 'neon',
    'scalar' or 'naive'), ``best_isa`` (the best this CPU supports), ``features``
    (detected CPU features, comma-separated) and ``cores`` (cores available to this
    process). Set the environment variable ``VAEC_ISA`` before importing vaec to force
    a lower path.
    """
    return dict(_cpu_features())


def set_sparse_input(mode):
    """Whether a VAE's first encoder layer skips the zeros of its input; returns the mode
    before. The setting is global (every model of the process).

    ``'auto'`` (the default) computes the layer from the input's nonzeros when a chunk of
    at least 32 rows is at most 30 % nonzero (binarized MNIST is about 13 %), ``'always'``
    whenever the kernel path has the sparse kernels (every path but ``'naive'``), ``'off'``
    never. The results differ from the dense product only in the order of the sums
    (float32 rounding). The environment variable ``VAEC_SPARSE_INPUT`` sets the mode a
    process starts with.
    """
    from . import _core

    if not isinstance(mode, str):
        raise TypeError(f"mode: expected 'off', 'auto' or 'always', got {type(mode).__name__}")
    return _core.set_sparse_input(mode)

from .m2 import M2  # noqa: E402
from .flows import Flow  # noqa: E402  (normalizing flows: vaec/flows.py)
from . import layers  # noqa: E402  (the layer specs: vaec.layers.Conv2d, ...)
from .torch_export import to_torch  # noqa: E402  (imports torch only when called)
