"""Bundled data resources (Intentonomy metadata, MDID splits); see ATTRIBUTION.md."""
