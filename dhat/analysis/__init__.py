"""Analysis: where a model looks (Grad-CAM vs ground-truth masks) and reports."""
