"""Linking SAE features to known variables: statistics, nulls, probes, discovery."""

from sciinterp.analysis.link import LINK_VARIABLES, LinkConfig, link_features
from sciinterp.analysis.stats import benjamini_hochberg, blocks_of, permutation_index, split_groups

__all__ = [
    "LINK_VARIABLES",
    "LinkConfig",
    "benjamini_hochberg",
    "blocks_of",
    "link_features",
    "permutation_index",
    "split_groups",
]
