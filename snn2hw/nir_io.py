"""Compatibility name: NIR import/export lives in the ``snn2hw.nir`` package."""
from snn2hw.nir import *  # noqa: F401,F403
from snn2hw.nir import NIRError, from_nir, read, to_nir, write  # noqa: F401
from snn2hw.nir.conventions import DT_METADATA_KEY  # noqa: F401
