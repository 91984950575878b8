"""pacscore: a plugin-based, extensible PACS core.

Plugins import :data:`hookimpl` from here to implement the hooks declared in
:mod:`pacscore.hookspecs`.
"""

from pacscore.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
