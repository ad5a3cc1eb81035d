"""Figures: result curves, Grad-CAM, the worst errors on CT and the three orthogonal views of a patch."""
