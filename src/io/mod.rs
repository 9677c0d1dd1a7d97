//! Reading and writing files: `.npy`, `.npz`, HDF5 (`.h5`) and `.keras` archives.
