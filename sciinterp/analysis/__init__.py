"""Linking SAE features to known variables: statistics, nulls, probes, discovery."""
