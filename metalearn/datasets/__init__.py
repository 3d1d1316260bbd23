"""Datasets for few-shot learning, read from local files (never downloaded at run time)."""

from ._omniglot import load_omniglot_arrays, omniglot, omniglot_search_paths
from .cifar import cifar_fs, fc100
from .miniimagenet import mini_imagenet

__all__ = [
    "omniglot",
    "load_omniglot_arrays",
    "omniglot_search_paths",
    "mini_imagenet",
    "cifar_fs",
    "fc100",
]
