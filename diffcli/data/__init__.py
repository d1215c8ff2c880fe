"""The training data: every dataset by name, as map-style datasets and one Lightning data module.

* :mod:`~diffcli.data.registry` - the table of datasets, ``build_dataset``, ``make_datamodule``.
* :mod:`~diffcli.data.datamodule` - ``DiffusionDataModule`` (images and 2-D points alike).
* :mod:`~diffcli.data.sources` - one reader per dataset; :mod:`~diffcli.data.idx` the MNIST
  file format; :mod:`~diffcli.data.toy` the 2-D point samplers.
* :mod:`~diffcli.data.vision` - image datasets decoded on access and their transforms.
* :mod:`~diffcli.data.labels` - class labels: ``LabelledDataset`` yields ``(x, y)`` pairs.
"""
