"""Images in: named datasets, image folders, ``shapes``, the pretraining loader and the
device-resident path.
"""
