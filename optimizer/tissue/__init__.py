"""Tissue property tables and conductivity models."""

from optimizer.tissue.table import Tissue, TissueTable, load_tissue_table

__all__ = ["Tissue", "TissueTable", "load_tissue_table"]
