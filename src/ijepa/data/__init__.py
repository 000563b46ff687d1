"""Data: datasets (image folders, in-memory tensors, Fashion-MNIST), transforms and resumable loaders.

Knows nothing of models or masks. Each name is imported from its module (``from ijepa.data.datasets import
ImageFolderDataset``): this package imports nothing, so a torch-free part of it (the ``ijepa shards`` parser, read
by ``ijepa --help``) loads without torch.

- :mod:`.sources`       the one factory: a dataset by kind and root (``open_images``), its normalisation
- :mod:`.layout`        the folder convention every command follows (kinds, split folders, links), in words
- :mod:`.datasets`      image folders and in-memory tensors; ``collate_skip_corrupt`` drops unreadable images
- :mod:`.decode`        one image, and ``Unreadable`` for one that cannot be used
- :mod:`.fashion_mnist` the IDX files (``load_fashion_mnist``)
- :mod:`.preprocess`    raw images -> an encoder's input (``prepare_images``, ``resolve_input_spec``)
- :mod:`.transforms`    pretraining and evaluation transforms
- :mod:`.gpu_augment`   the pretraining augmentations, run on the training device
- :mod:`.loader`        resumable loaders and in-memory batches
- :mod:`.shards`        sharded tar input (``ijepa shards``)
"""
