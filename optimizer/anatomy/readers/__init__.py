"""Anatomy readers: mask folders, label maps, .npz and DICOM RTSTRUCT, behind load_anatomy."""

from optimizer.anatomy.readers.dicom import read_dicom_folder
from optimizer.anatomy.readers.label_map import read_label_map
from optimizer.anatomy.readers.load import load_anatomy
from optimizer.anatomy.readers.mask_folder import read_mask_folder
from optimizer.anatomy.readers.npz import read_npz, save_anatomy_npz

__all__ = [
    "load_anatomy",
    "read_dicom_folder",
    "read_label_map",
    "read_mask_folder",
    "read_npz",
    "save_anatomy_npz",
]
