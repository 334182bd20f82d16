"""Plots and reports, built from results only."""
