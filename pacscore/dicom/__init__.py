"""DICOM network services: the SCP (echo, store, find, move, get) and SCU helpers."""
