"""Pictures of anatomy, needles and fields: slices with contours, histograms.

matplotlib is imported lazily with the Agg backend so nothing here needs a screen.
"""
