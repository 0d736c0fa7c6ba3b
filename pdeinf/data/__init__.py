"""Data layer: PDEGym netCDF and The Well HDF5 readers, the look-alike generator, splits,
one-step transition datasets and influence batches.

Submodules: `pdegym` (read/write the PDEGym layout), `well` (The Well euler_multi_quadrants),
`datasets` (splits, `PDEData`, `TransitionDataset`, `influence_batch`), `generate`
(look-alike data), `statistics` (per-class statistics beside PDEGym's), `fingerprint`
(content keys of files, cached), `validation` (physical checks of files, size checks of
generation requests), `cli`.
"""
from pdeinf.data.fingerprint import content_key
from pdeinf.data.pdegym import open_dataset, write_chunk
from pdeinf.data.validation import MIN_RESOLUTION, validate_dataset
from pdeinf.data.well import open_well, write_well_file

__all__ = ["MIN_RESOLUTION", "content_key", "open_dataset", "open_well", "validate_dataset", "write_chunk",
           "write_well_file"]
