"""ectplan's planning library: anatomy, tissue, electrodes, field, evaluation and search.

Research use only; not a medical device. Imports neither grpc nor ray at module level so that
everything here runs in a notebook.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ectplan")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+source"

RESEARCH_USE_NOTICE = (
    "ectplan is research software for electroporation treatment planning. It is not a medical "
    "device and must not be used for clinical decisions."
)
