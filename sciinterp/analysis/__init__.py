"""Linking SAE features to known variables: statistics, nulls, probes, discovery."""

from sciinterp.analysis.analyze import AnalysisResult, analyze, load_analysis
from sciinterp.analysis.describe import describe_feature
from sciinterp.analysis.discovery import discovery_queue
from sciinterp.analysis.link import LINK_VARIABLES, LinkConfig, link_features
from sciinterp.analysis.probe import sparse_probe
from sciinterp.analysis.stats import benjamini_hochberg, blocks_of, permutation_index, split_groups

__all__ = [
    "LINK_VARIABLES",
    "AnalysisResult",
    "LinkConfig",
    "analyze",
    "benjamini_hochberg",
    "blocks_of",
    "describe_feature",
    "discovery_queue",
    "link_features",
    "load_analysis",
    "permutation_index",
    "sparse_probe",
    "split_groups",
]
