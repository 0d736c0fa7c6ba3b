"""Data layer: PDEGym netCDF (`pdegym`) and The Well HDF5 (`well`) readers, the look-alike
generator (`generate`), splits, transitions and influence batches (`datasets`), statistics,
content keys (`fingerprint`) and checks (`validation`)."""
from pdeinf.data.fingerprint import content_key
from pdeinf.data.pdegym import open_dataset, write_chunk
from pdeinf.data.validation import MIN_RESOLUTION, validate_dataset
from pdeinf.data.well import open_well, write_well_file

__all__ = ["MIN_RESOLUTION", "content_key", "open_dataset", "open_well", "validate_dataset", "write_chunk",
           "write_well_file"]
