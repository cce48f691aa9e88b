"""Errors raised for anatomy input that cannot be used, each saying where and how to fix it."""


class AnatomyError(ValueError):
    """Base class: the anatomy given cannot be planned on as it is."""


class GridError(AnatomyError):
    """A voxel grid is unusable: NaN or zero spacing, a non-invertible affine, a bad shape."""


class GridMismatchError(AnatomyError):
    """Masks that must share one voxel grid do not."""


class MissingTargetError(AnatomyError):
    """No target structure was found, or the target is empty."""


class UnreadableFileError(AnatomyError):
    """A file is truncated, not an image, or not in a format we read."""


class LabelError(AnatomyError):
    """A label map holds values its label table does not define, or the table is malformed."""


class DicomReferenceError(AnatomyError):
    """A DICOM RTSTRUCT does not belong to the image series it was found with."""


class GridTooLargeError(AnatomyError):
    """The planning grid would exceed the voxel budget."""
