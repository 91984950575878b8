"""The DICOM file format, below the archive and the network services.

Part 10 files (preamble, file meta) read and written, the header scan of
the indexed attributes, the text key used for case/accent-insensitive
matching, and the named DIMSE status codes.  Only the standard library,
pydicom and this package: never pynetdicom, :mod:`pacscore.dicom` (the
network services) or :mod:`pacscore.web`; ``tests/test_layers.py``
checks it.
"""
