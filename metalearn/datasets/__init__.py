"""Datasets for few-shot learning, read from local files (never downloaded at run time)."""

from ._omniglot import load_omniglot_arrays, omniglot, omniglot_search_paths

__all__ = ["omniglot", "load_omniglot_arrays", "omniglot_search_paths"]
