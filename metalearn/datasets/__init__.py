"""Datasets for few-shot learning, read from local files (never downloaded at run time).

Every reader looks in the same places, in order: the folder it is given (which must
exist), ``$METALEARN_DATA``, the user data folder (``$METALEARN_DATA_HOME``, else
``~/.cache/metalearn/data``), and ``../shared/data`` beside a source checkout. Datasets published as compressed images are
decoded once into the cache folder (``$METALEARN_CACHE``, else ``~/.cache/metalearn``) and
opened memory-mapped.
"""

from ._locate import DataNotFoundError, user_data_dir
from ._omniglot import load_omniglot_arrays, omniglot, omniglot_search_paths, vinyals_split
from .cifar import cifar_fs, fc100
from .miniimagenet import mini_imagenet
from .tiered import tiered_imagenet
from .cub import cub
from ._cache import cache_dir
from .arrays import LabeledData, from_arrays
from .image_folder import image_folder, read_image
from .preprocess import Preprocess

# the packaged Omniglot arrays' recipe (README of the data: ink-positive, Pillow's
# LANCZOS from the 105x105 originals, /255): omniglot.preprocess(pngs) gives omniglot()'s x
omniglot.preprocess = Preprocess(size=28, channels=1, resize="lanczos", polarity="invert")

__all__ = [
    "omniglot",
    "load_omniglot_arrays",
    "omniglot_search_paths",
    "vinyals_split",
    "DataNotFoundError",
    "user_data_dir",
    "mini_imagenet",
    "tiered_imagenet",
    "cub",
    "cache_dir",
    "cifar_fs",
    "fc100",
    "image_folder",
    "read_image",
    "from_arrays",
    "LabeledData",
    "Preprocess",
]
