"""DICOM network services: the SCP (echo, store, find, move, get, worklist, MPPS) and
SCU helpers; pacscore's extensions of pynetdicom are in :mod:`.pynetdicom_ext`."""
