"""edgeseg: SAM3's text encoder for edge devices.

Importing the package is cheap: it pulls in neither torch nor any optional backend. Import the
submodules you need (``edgeseg.tokenizer``, ``edgeseg.encoders``, ``edgeseg.checkpoints``).
"""

__version__ = "0.1.0"

from edgeseg.errors import EdgesegError  # noqa: E402

__all__ = ["EdgesegError", "__version__"]
